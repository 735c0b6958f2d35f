"""prepare-data: the synthetic source, shards and manifest, resume, bad input, --verify and the CLI.
CelebA's own layout and the crops are in test_data_celeba.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import prepare_synthetic, shard_images
from dreamctl.data.prepare import PROGRESS
from dreamctl.data.shards import manifest_sha256, read_manifest, verify
from dreamctl.data.synthetic import draw_faces
from dreamctl.errors import DataError


def test_synthetic_is_deterministic_and_matches_draw_faces(synthetic_data_dir, tmp_path):
    again = prepare_synthetic(tmp_path / "again", workers=2).out_dir  # another process layout, same bytes
    m1, m2 = read_manifest(synthetic_data_dir), read_manifest(again)
    assert m1.counts == {"train": 230, "valid": 13, "test": 13}
    assert m1.splits == m2.splits and manifest_sha256(m1) == manifest_sha256(m2)
    assert np.array_equal(shard_images(again / "valid-00000.h5"), draw_faces(13, 32, 0, start=230))
    other = prepare_synthetic(tmp_path / "other", seed=1).out_dir
    assert read_manifest(other).splits["train"].shards[0].sha256 != m1.splits["train"].shards[0].sha256


# --- resume and atomicity ------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_an_interrupted_prepare_resumes_without_redoing_finished_shards(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"

    def stop_after_first_shard(progress):
        if progress.shard:
            raise Interrupt

    with pytest.raises(Interrupt):
        prepare_synthetic(out, on_progress=stop_after_first_shard)
    assert not (out / "manifest.json").exists()  # unfinished folders never look finished
    assert list(json.loads((out / PROGRESS).read_text())["shards"]) == ["train-00000.h5"]
    (out / ".train-00001.h5.999999@host.tmp").write_bytes(b"half a shard")  # as a crash mid-write leaves it
    before = (out / "train-00000.h5").stat()
    seen = []
    result = prepare_synthetic(out, on_progress=lambda p: seen.append(p.shard))
    after = (out / "train-00000.h5").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (result.shards_reused, result.shards_written, result.reused) == (1, 4, 100)
    assert "train-00000.h5" not in seen
    assert not (out / PROGRESS).exists() and not (out / ".train-00001.h5.999999@host.tmp").exists()
    assert read_manifest(out).splits == read_manifest(synthetic_data_dir).splits
    assert prepare_synthetic(out) and verify(out) == []  # a finished folder: rerun is a no-op


def test_a_second_prepare_data_on_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    """The second took the first's half-written shard for a killed run's and deleted it (crash audit)."""
    out = tmp_path / "data"
    in_progress = out / f".train-00001.h5.{os.getpid()}@{os.uname().nodename}.tmp"
    refused = []

    def start_a_second(progress):
        if progress.shard == "train-00000.h5":
            in_progress.write_bytes(b"the first's next shard, half written")
            with pytest.raises(DataError) as err:
                prepare_synthetic(out)
            refused.append(str(err.value))
            assert in_progress.read_bytes() == b"the first's next shard, half written"

    result = prepare_synthetic(out, on_progress=start_a_second)
    assert refused == [f"--out {out} is being prepared by another prepare-data (pid {os.getpid()}); "
                       "wait for it to finish or stop it first"]
    assert result.shards_written == 5 and verify(out) == []
    assert prepare_synthetic(out).shards_reused == 5  # the lock went with the first


def test_a_rerun_rebuilds_a_damaged_shard(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    _flip_byte(out / "train-00001.h5")
    intact = (out / "train-00000.h5").stat().st_mtime_ns
    prepare_synthetic(out)
    assert verify(out) == [] and (out / "train-00000.h5").stat().st_mtime_ns == intact


def test_a_repair_stopped_before_its_progress_record_keeps_the_manifest(synthetic_data_dir, tmp_path, monkeypatch):
    """Repairing a shard replaces the manifest with a progress record: the record comes first, so a
    stop in between never leaves shards with neither (a re-run would then refuse the folder)."""
    import errno

    from dreamctl.data import prepare as prepare_module

    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    _flip_byte(out / "train-00001.h5")
    real_write_json = prepare_module.atomic.write_json

    def full_disk(path, *args, **kwargs):
        if Path(path).name == PROGRESS:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_json(path, *args, **kwargs)

    monkeypatch.setattr(prepare_module.atomic, "write_json", full_disk)
    with pytest.raises(OSError):
        prepare_synthetic(out)
    assert (out / "manifest.json").is_file()
    monkeypatch.undo()
    prepare_synthetic(out)  # the same command, once there is room: only the damaged shard is rebuilt
    assert verify(out) == []


def test_a_rerun_repairs_a_manifest_whose_count_was_edited(synthetic_data_dir, tmp_path):
    """--verify's advice (re-run the same command) must work for every problem it reports: the shard
    hashes as recorded but holds another count than the manifest says."""
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["count"] = 999
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify(out) and "the manifest says (999," in verify(out)[0]
    prepare_synthetic(out)
    assert verify(out) == [] and read_manifest(out).splits["train"].shards[0].count == 100


def test_other_settings_are_refused_unless_overwrite(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    with pytest.raises(DataError, match=r"preprocessing\.resolution: 32 there, 16 now.*--overwrite"):
        prepare_synthetic(out, resolution=16)
    assert verify(out) == []  # the refused run touched nothing
    (out / "cache").mkdir(exist_ok=True)
    (out / "cache" / "refstats-0123456789abcdef.npz").write_bytes(b"statistics of the replaced images")
    (out / "cache" / "notes.txt").write_text("mine")
    prepare_synthetic(out, resolution=16, overwrite=True)
    assert read_manifest(out).image_shape == (16, 16, 3)
    # evaluate's statistics of the images replaced (keyed by their hash: never used again) go with them
    assert [p.name for p in (out / "cache").iterdir()] == ["notes.txt"]


def test_shards_without_a_record_are_not_overwritten(tmp_path):
    (tmp_path / "train-00000.h5").write_bytes(b"someone else's")
    with pytest.raises(DataError, match="without a manifest"):
        prepare_synthetic(tmp_path)
    assert (tmp_path / "train-00000.h5").read_bytes() == b"someone else's"


# --- bad input -------------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the images dataset, past every header
    path.write_bytes(bytes(data))



def test_verify_catches_a_flipped_byte(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    assert verify(out) == []
    _flip_byte(out / "train-00002.h5")
    problems = verify(out)
    assert len(problems) == 1 and "train-00002.h5" in problems[0] and "does not hash to the sha256" in problems[0]


# --- command line ----------------------------------------------------------------------


def test_cli_prepares_verifies_and_fails_with_exit_2_and_one_line(synthetic_data_dir, tmp_path, capsys):
    from dreamctl.cli import main

    out = tmp_path / "data"
    args = ["prepare-data", "--source", "synthetic", "--count", "40", "--resolution", "16", "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    assert "wrote 40 images" in capsys.readouterr().out
    assert main(["prepare-data", "--verify", str(out)]) == 0
    _flip_byte(out / "train-00000.h5")
    assert main(["prepare-data", "--verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert "train-00000.h5" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: 1 of 3 shards") and "\n" not in err
    assert main([*args[:-4], "--resolution", "32", "--out", str(out)]) == 2  # other settings
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare-data", "--source", "celeba", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CelebA files missing") and "\n" not in err


def test_synthetic_resolution_too_small_writes_nothing(tmp_path, capsys):
    from dreamctl.cli import main

    out = tmp_path / "s"
    assert main(["prepare-data", "--source", "synthetic", "--count", "8", "--resolution", "7", "--out", str(out)]) == 2
    assert "resolution 7 is below 8" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_resolution_past_the_maximum_writes_nothing(tmp_path, capsys):
    """100000 px was a 140 GiB allocation and a traceback, with progress.json left behind."""
    from dreamctl.cli import main

    out = tmp_path / "pd1"
    assert main(["prepare-data", "--source", "synthetic", "--count", "5", "--resolution", "100000", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resolution 100000 is above the 1024 px" in err and "\n" not in err
    assert not out.exists()
    # a recipe has the same bound: no data could be prepared for it
    from dreamctl.config import load_recipe
    from dreamctl.errors import ConfigError

    assert load_recipe("tiny", ["data.resolution=1024", "model.attention_resolutions=[]"]).data.resolution == 1024
    with pytest.raises(ConfigError, match="data.resolution: Input should be less than or equal to 1024"):
        load_recipe("tiny", ["data.resolution=2048", "model.attention_resolutions=[]"])


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_prepare_data_did_not_write_is_refused(tmp_path, capsys, overwrite):
    """With --overwrite it would have been emptied; without, it got shards and a manifest among its
    checkpoints (exit 0). An empty folder, shards alone and a finished folder are still prepare-data's."""
    from dreamctl.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    before = sorted(p.name for p in run.rglob("*"))
    args = ["prepare-data", "--source", "synthetic", "--count", "5", "--resolution", "16", "--workers", "1",
            *(["--overwrite"] if overwrite else [])]
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a prepared-data folder (it holds checkpoints/, run.json)" in err and "another --out" in err
    assert sorted(p.name for p in run.rglob("*")) == before and "\n" not in err
    ours = tmp_path / "ours"
    ours.mkdir()
    assert main([*args, "--out", str(ours)]) == 0
    if overwrite:
        (ours / "manifest.json").unlink()  # shards alone
        assert main([*args, "--out", str(ours)]) == 0
    else:
        assert main([*args, "--out", str(ours)]) == 0
        assert "kept 5 images" in capsys.readouterr().out


def test_a_synthetic_count_past_the_maximum_is_one_line_not_an_out_of_memory_kill(tmp_path, capsys):
    """--count 99999999999999 built a list of 1e14 items and was killed for memory."""
    from dreamctl.cli import main
    from dreamctl.data.sources import MAX_SYNTHETIC_COUNT, synthetic_split_counts

    assert sum(synthetic_split_counts(MAX_SYNTHETIC_COUNT, 0.05, 0.05).values()) == MAX_SYNTHETIC_COUNT
    with pytest.raises(DataError, match=r"--count 10000001 is above the 10,000,000 faces"):
        synthetic_split_counts(MAX_SYNTHETIC_COUNT + 1, 0.05, 0.05)  # counted, not listed: safe on a broken check
    out = tmp_path / "big"
    assert main(["prepare-data", "--source", "synthetic", "--count", "99999999999999", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--count 99999999999999 is above" in err and "pass --count 10000000 or less" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("image_shape, dtype, problem", [
    ([32, 16, 3], "uint8", "field image_shape: Value error, height 32 and width 16 differ, and prepared images are square"),
    ([32, 32, 3], "float32", "field dtype: Input should be 'uint8'"),
])
def test_verify_refuses_a_consistent_folder_of_images_training_cannot_use(synthetic_data_dir, tmp_path, capsys,
                                                                          image_shape, dtype, problem):
    """Shards of 32x16 images with a manifest that says so and hashes that match passed --verify, and
    training then crashed on them: the manifest itself must say square RGB uint8."""
    import h5py

    from dreamctl.atomic import file_sha256
    from dreamctl.cli import main

    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in (sh for split in manifest["splits"].values() for sh in split["shards"]):
        path = out / shard["file"]
        with h5py.File(path, "r") as f:
            images, names = f["images"][()], f["names"][()]
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=images[:, : image_shape[0], : image_shape[1]].astype(dtype))
            f.create_dataset("names", data=names)
        shard["sha256"] = file_sha256(path)
    manifest.update(image_shape=image_shape, dtype=dtype)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["prepare-data", "--verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "re-run prepare-data with --overwrite" in err and "\n" not in err
    with pytest.raises(DataError, match="field (image_shape|dtype)"):
        read_manifest(out)  # what training and evaluation read


def test_verify_refuses_options_it_does_not_use(synthetic_data_dir, tmp_path, capsys):
    from dreamctl.cli import main

    assert main(["prepare-data", "--verify", str(synthetic_data_dir), "--source", "synthetic", "--out", str(tmp_path / "d2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--verify takes no other option (got --source, --out)" in err and "\n" not in err
    assert not (tmp_path / "d2").exists()


def test_verify_and_a_rerun_refuse_a_manifest_edited_to_null(synthetic_data_dir, tmp_path, capsys):
    from dreamctl.cli import main

    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = None
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["prepare-data", "--verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "field splits.train.shards.0.sha256" in err and "--overwrite" in err and "\n" not in err
    with pytest.raises(DataError, match=r"field splits\.train\.shards\.0\.sha256"):
        prepare_synthetic(out)  # a re-run reuses the manifest's shard records
    assert (out / "train-00000.h5").read_bytes() == (synthetic_data_dir / "train-00000.h5").read_bytes()


def test_workers_leave_a_groups_ctrl_c_to_the_parent(tmp_path):
    """Ctrl-C in a terminal reaches every process of the group; a worker dying of it mid-task broke
    the pool or left it hung. The workers ignore it, so only the parent decides to stop."""
    import multiprocessing

    sent = []

    def ignores_sigint(pid: int) -> bool:  # once the worker has started: before, nothing can protect it
        status = Path(f"/proc/{pid}/status").read_text()
        return bool(int(status.split("SigIgn:")[1].split()[0], 16) & 1 << (signal.SIGINT - 1))

    def interrupt_workers(progress) -> None:
        if not sent:
            sent.extend(p.pid for p in multiprocessing.active_children())
            deadline = time.monotonic() + 30
            while not all(map(ignores_sigint, sent)) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in sent:
                os.kill(pid, signal.SIGINT)

    try:
        result = prepare_synthetic(tmp_path / "data", workers=2, count=1200, on_progress=interrupt_workers)
    except KeyboardInterrupt:  # what a worker's interrupt became in the parent: it would end the test session
        pytest.fail("a worker died of the Ctrl-C and the parent raised KeyboardInterrupt")
    assert len(sent) == 2 and verify(result.out_dir) == []
    assert sum(read_manifest(result.out_dir).counts.values()) == 1200


def _start_prepare(out: Path, mark: str) -> subprocess.Popen:
    """prepare-data in a session of its own, as from a terminal or a batch job, with a mark in its
    environment (and its workers') to find any process it leaves behind; returns once a shard is written."""
    proc = subprocess.Popen([sys.executable, "-m", "dreamctl", "prepare-data", "--source", "synthetic", "--count",
                             "20000", "--resolution", "32", "--shard-size", "500", "--workers", "2", "--out", str(out)],
                            env={**os.environ, "DREAMCTL_TEST_MARK": mark}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300  # generous: a loaded machine is slow to import torch and start the pool
    while not list(out.glob("train-*.h5")):
        assert time.monotonic() < deadline and proc.poll() is None, "no shard written"
        time.sleep(0.2)
    return proc


def _marked(mark: str, wait_s: float = 10.0) -> list[str]:
    """The processes still carrying `mark` after up to `wait_s` seconds."""
    def scan() -> list[str]:
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"DREAMCTL_TEST_MARK={mark}".encode() in environ.read_bytes():
                    found.append(environ.parent.name)
            except OSError:  # gone meanwhile, or not ours to read
                pass
        return found

    deadline = time.monotonic() + wait_s
    while scan() and time.monotonic() < deadline:
        time.sleep(0.2)
    return scan()


def test_sigterm_to_the_group_shuts_the_worker_pool_down(tmp_path):
    """SIGTERM to the process group (a scheduler, `timeout`, a terminal) stops prepare-data like Ctrl-C:
    exit 143, finished shards kept, no worker left running. The default handler killed the parent alone
    and the pool ran on; with a forkserver, the signal killed it too and hid the workers from the stop."""
    mark = uuid.uuid4().hex
    proc = _start_prepare(tmp_path / "data", mark)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "finished shards in" in err
    assert _marked(mark) == []


def test_sigkill_of_prepare_data_takes_its_workers_with_it(tmp_path):
    """No handler runs on SIGKILL (the OOM killer, `kill -9`): the workers, which ignore SIGTERM and
    wait on the task queue forever, ask Linux to kill them when their parent dies."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    mark = uuid.uuid4().hex
    proc = _start_prepare(tmp_path / "data", mark)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _marked(mark) == []


class _Worker:
    """A pool worker as _stop_pool sees it; `codes` are what successive exitcode reads return."""

    def __init__(self, codes: list[int | None], sentinel: int):
        self.codes, self.sentinel, self.killed = codes, sentinel, False

    @property
    def exitcode(self) -> int | None:
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        self.killed = True

    def join(self) -> None:
        pass


def test_stopping_the_pool_does_not_wait_out_the_grace_for_a_worker_reaped_meanwhile():
    """The pool's own thread reaps a dead worker too: its exit code can read None once, and it is no longer
    alive a moment later. The stop must still see the death at once, not sit out the 30 s grace beside
    the surviving worker, which is blocked handing over a result (seen in 1 of 12 loaded runs)."""
    from dreamctl.data.pool import _stop_pool

    dead_r, dead_w = os.pipe()
    os.close(dead_w)  # a dead process's sentinel: ready at once
    live_r, live_w = os.pipe()  # the survivor's: never ready
    try:
        reaped = _Worker([None, -signal.SIGKILL], dead_r)  # None read while the pool's thread reaps it
        survivor = _Worker([None], live_r)

        class Pool:
            _processes = {1: reaped, 2: survivor}

            def shutdown(self, wait: bool, cancel_futures: bool) -> None:
                pass

        started = time.monotonic()
        assert _stop_pool(Pool(), grace_s=5.0) == [-signal.SIGKILL]
        assert time.monotonic() - started < 2 and survivor.killed
    finally:
        for fd in (dead_r, live_r, live_w):
            os.close(fd)


def test_a_worker_killed_mid_run_stops_prepare_data_with_one_line(tmp_path):
    """A worker that dies (the OOM killer, a decoder's crash) breaks the pool: prepare-data stops at once
    with one line that says what happened and how to go on, keeps its finished shards, and leaves no
    process behind; the surviving worker was waiting to hand over a result that nobody would read."""
    mark = uuid.uuid4().hex
    proc = _start_prepare(tmp_path / "data", mark)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    killed_at = time.monotonic()
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert time.monotonic() - killed_at < 20  # not the stop's grace for a worker finishing its chunk
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "decoding worker died (killed by SIGKILL" in err and "re-run the same command" in err
    assert _marked(mark) == []
    assert json.loads((tmp_path / "data" / PROGRESS).read_text())["shards"]  # the finished shards are kept


def test_a_source_folder_moved_elsewhere_is_still_the_same_data(tmp_path):
    """The source's path is not a setting: after moving the images, the same command must reuse the shards, not refuse."""
    from PIL import Image

    from conftest import prepare_listing

    src = tmp_path / "photos"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    first = prepare_listing("folder", src, tmp_path / "data")
    src.rename(tmp_path / "moved")
    again = prepare_listing("folder", tmp_path / "moved", tmp_path / "data")
    assert first.shards_written >= 1 and (again.shards_written, again.shards_reused) == (0, first.shards_written)
    assert verify(tmp_path / "data") == []


def test_the_content_hash_of_a_manifest_never_changes():
    """Runs record their data's manifest_sha256 and evaluate refuses data that hashes otherwise: a change to
    how the hash is computed would refuse every earlier run's data. The value is sha256 of the canonical JSON
    of format, preprocessing, image_shape and each shard's [file, count, sha256]; `created` is left out."""
    from dreamctl.data.shards import parse_manifest

    manifest = {"format": "dreamctl-shards/1", "preprocessing": {"crop": "center:178", "resolution": 16},
                "image_shape": [16, 16, 3], "counts": {"train": 2}, "created": "2026-11-29", "skipped": [],
                "splits": {"train": {"count": 2, "skipped": 0,
                                     "shards": [{"file": "train-00000.h5", "count": 2, "sha256": "ab" * 32}]}}}
    expected = "3bce4ab4323f6bc7bc374ae8741eacf90b57d3b321d64575be0bfaa131539b0f"
    assert manifest_sha256(parse_manifest(Path("manifest.json"), json.dumps(manifest))) == expected
    moved = manifest | {"created": "2030-01-01", "source": {"root": "/elsewhere"}}
    assert manifest_sha256(parse_manifest(Path("manifest.json"), json.dumps(moved))) == expected
