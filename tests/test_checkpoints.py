"""Checkpoints: what they hold, and resume past a corrupt, cut or unopenable one (tiny model, CPU)."""

from __future__ import annotations

import errno
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from dreamctl.cli import main
from dreamctl.errors import CheckpointError, CorruptCheckpoint, DreamctlWarning
from dreamctl.records import read_jsonl
from dreamctl.training.checkpoints import (
    REQUIRED,
    Checkpoint,
    check_fits,
    check_moments_fit,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    set_aside_newer,
    step_of,
)
from tiny_runs import TINY, assert_identical, final_weights, train


def _minimal(step: int, **fields) -> dict:
    """The smallest dict load_checkpoint accepts as the checkpoint of `step`."""
    return {k: {} for k in REQUIRED} | {"step": step, "images_seen": 0, "wall_time_s": 0.0, "recipe": ""} | fields


def test_checkpoint_holds_everything(tmp_path, synthetic_data_dir):
    assert train(tmp_path / "run", synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004.pt")
    assert list(ckpt) == ["model", "ema", "optimizer", "step", "images_seen", "wall_time_s", "data_position",
                          "meter", "recipe", "run_id", "processes", "dreamctl_version"]  # no RNG state: each
    # step reseeds; processes: what wrote it, which a resume on others names
    assert ckpt["processes"] == {"world_size": 1, "threads": torch.get_num_threads()}
    assert ckpt["data_position"]["batch_index"] == 4
    assert (tmp_path / "run" / "samples" / "step-00000004.png").stat().st_size > 0


@pytest.mark.parametrize("renamed_by_a_killed_resume", [False, True])
def test_resume_past_a_corrupt_checkpoint_sets_aside_what_was_drawn_from_it(tmp_path, synthetic_data_dir, capsys,
                                                                            renamed_by_a_killed_resume):
    """Step 8 is trained again (here with another learning rate): the images and scores of the old step-8
    checkpoint would be taken for the new one's, as their folder and protocol name only the step. Also when
    an earlier resume set the checkpoint aside and was killed before it moved these: the move was left undone."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0
    drawn = {"samples/ddim2-step8": ("sample.json", {"checkpoint_step": 8}),
             "samples/ddim2-step4": ("sample.json", {"checkpoint_step": 4}),
             "eval": ("p.json", {"protocol": {"checkpoint_step": 8}})}
    for folder, (name, record) in drawn.items():
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / name).write_text(json.dumps(record))
    (run / "eval" / "q@step4.json").write_text(json.dumps({"protocol": {"checkpoint_step": 4}}))
    newest = list_checkpoints(run / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    if renamed_by_a_killed_resume:
        newest.rename(newest.with_name(newest.name + ".corrupt"))
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "optim.lr=0.001"]) == 0
    aside = run / "set-aside" / "after-step-4"
    assert "2 sample folder(s) and evaluation file(s) of the checkpoints after step 4 moved to" in capsys.readouterr().err
    assert (aside / "samples" / "ddim2-step8" / "sample.json").is_file() and (aside / "eval" / "p.json").is_file()
    assert sorted(p.name for p in (run / "samples").iterdir() if p.is_dir()) == ["ddim2-step4"]
    assert [p.name for p in (run / "eval").iterdir()] == ["q@step4.json"]


@pytest.mark.parametrize("full_disk", [
    OSError(errno.ENOSPC, "No space left on device"),  # our file handle's write or flush
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file"),  # torch's
], ids=["OSError", "RuntimeError"])
def test_a_checkpoint_that_cannot_be_written_keeps_the_older_ones(tmp_path, synthetic_data_dir, capsys,
                                                                    monkeypatch, full_disk):
    """A full disk while writing step 8's checkpoint: one line, exit 2, run.json says failed, the step-4
    checkpoint stays and nothing half-written is left."""
    from dreamctl.training import checkpoints

    real_save = torch.save

    def disk_full_at_step_8(obj, f, *args, **kwargs):
        if obj["step"] == 8:
            f.write(b"PK\x03\x04half")
            raise full_disk
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", disk_full_at_step_8)
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=12"], recipe="tiny") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {run / 'checkpoints' / 'step-00000008.pt'} could not be written")
    assert "free space on that disk" in err and "\n" not in err
    # torch's "unexpected pos" says no more; a small checkpoint in MB, not "0.01 GB" beside "0.01 GB" free
    assert re.search(r"\d [GM]B free on that disk, the newest checkpoint takes \d+\.\d MB\)", err)
    assert err.endswith(f"then continue with `dreamctl resume {run}`")  # this run, on as many processes
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004.pt"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "could not be written" in info["error"]



def test_the_log_is_on_disk_before_each_checkpoint(tmp_path, synthetic_data_dir, monkeypatch):
    """Checkpoints are fsynced; metrics.jsonl was not: a power cut could keep step 4's checkpoint and lose the
    log lines before it, which resume, going on from step 4, never writes again."""
    from dreamctl import atomic

    synced: list[str] = []
    real = atomic.fsync
    monkeypatch.setattr(atomic, "fsync", lambda path: synced.append(Path(path).name) or real(path))
    assert train(tmp_path / "run", synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0
    checkpoints = [i for i, name in enumerate(synced) if name.startswith(".step-")]
    assert len(checkpoints) == 2 and all(synced[i - 2:i] == ["metrics.jsonl", "run"] for i in checkpoints)


def test_a_run_json_that_cannot_record_the_failure_is_named_in_the_error(tmp_path, synthetic_data_dir, capsys,
                                                                        monkeypatch):
    """The full disk that stopped the run may refuse run.json's 'failed' too: the run's own error is the
    one reported, with that added to its line, not the second error in its place."""
    from dreamctl.training import checkpoints
    from dreamctl.training.rundir import RunDir

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_update = RunDir.update_info

    def update_info(self, changes):
        if changes.get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.run_file))
        return real_update(self, changes)

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    monkeypatch.setattr(RunDir, "update_info", update_info)
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 2
    err = capsys.readouterr().err.strip()
    if sys.version_info >= (3, 11):  # add_note
        assert err.endswith(f"; run.json could not record it: [Errno 28] No space left on device: '{run / 'run.json'}'")
    assert err.startswith(f"error: checkpoint {run / 'checkpoints' / 'step-00000004.pt'} could not be written")
    assert "\n" not in err

def test_corrupt_newest_checkpoint_falls_back(tmp_path, synthetic_data_dir, capsys):
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0
    newest = list_checkpoints(run / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash mid-copy
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=12"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and newest.name in warning[0] and "cannot be read" in warning[0]
    assert train(tmp_path / "straight", synthetic_data_dir, TINY + ["train.max_steps=12"], recipe="tiny") == 0
    assert_identical(final_weights(run), final_weights(tmp_path / "straight"))
    assert (run / "checkpoints" / (newest.name + ".corrupt")).is_file()  # set aside, kept for inspection
    for path in list_checkpoints(run / "checkpoints"):
        path.write_bytes(b"")
    assert main(["resume", str(run)]) == 2
    assert "every checkpoint" in capsys.readouterr().err


def test_rotation_after_skipping_a_corrupt_checkpoint_keeps_the_good_ones(tmp_path, synthetic_data_dir, capsys):
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0  # steps 4 and 8
    newest = list_checkpoints(run / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    # from step 4 to step 6 keeping one checkpoint: the corrupt step 8 must not be the one kept
    assert main(["resume", str(run), "--set", "train.max_steps=6", "--set", "train.keep_checkpoints=1"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000006.pt"]
    assert main(["resume", str(run), "--set", "train.max_steps=7"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert [r["step"] for r in info["resumes"]] == [4, 6]


def test_a_checkpoint_that_cannot_be_opened_stops_resume_without_skipping_it(tmp_path, synthetic_data_dir, capsys):
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    (run / "checkpoints" / "step-00000008.pt").mkdir()  # IsADirectoryError: an access problem, not corruption
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "step-00000008.pt cannot be opened" in err and "warning" not in err
    assert (run / "checkpoints" / "step-00000004.pt").is_file() and (run / "checkpoints" / "step-00000008.pt").is_dir()


class NotATensor:
    """Stands for anything weights_only=True refuses: a class another dreamctl or torch might have saved."""


def test_a_whole_checkpoint_that_weights_only_refuses_stops_resume_and_moves_nothing(tmp_path, synthetic_data_dir,
                                                                                     capsys):
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    newest = run / "checkpoints" / "step-00000008.pt"
    torch.save({**load_checkpoint(run / "checkpoints" / "step-00000004.pt"), "extra": NotATensor()}, newest)
    log = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "step-00000008.pt holds objects that loading with weights_only=True refuses" in err and "warning" not in err
    assert newest.is_file() and (run / "metrics.jsonl").read_text() == log  # not set aside, the log not cut back


def test_a_whole_checkpoint_that_fails_to_load_stops_resume_and_moves_nothing(tmp_path, synthetic_data_dir,
                                                                             capsys, monkeypatch):
    """Only damage the archive's checksums show is skipped: a whole file that fails to load for another
    reason (memory, say) would otherwise be set aside with every newer one, and the log cut back."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0  # steps 4 and 8
    real_load = torch.load

    def load(path, *args, **kwargs):
        if str(path).endswith("step-00000008.pt"):
            raise MemoryError
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    before = {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.is_file()}
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=12"]) == 2
    err = capsys.readouterr().err
    assert "step-00000008.pt is intact but did not load (MemoryError" in err and "warning" not in err
    assert {p.name: p.read_bytes() for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.is_file()} == before


def test_a_checkpoint_whose_read_fails_stops_resume_and_moves_nothing(tmp_path, synthetic_data_dir, capsys,
                                                                      monkeypatch):
    """An I/O error while reading the newest checkpoint (EIO on NFS) says nothing about its bytes: taken for
    damage, resume set it aside as corrupt, trained its steps again and moved later samples aside (crash
    audit, zip_damage). It stops with one line naming the file, and nothing changes."""
    import zipfile

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=8"], recipe="tiny") == 0  # steps 4 and 8
    newest = run / "checkpoints" / "step-00000008.pt"
    real_testzip = zipfile.ZipFile.testzip

    def testzip(archive):  # the CRC check reads every byte of the file: the read fails midway
        if Path(archive.filename) == newest:
            raise OSError(errno.EIO, "Input/output error")
        return real_testzip(archive)

    monkeypatch.setattr(zipfile.ZipFile, "testzip", testzip)
    before = _files(run)
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=12"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {newest} could not be read from disk (OSError: Input/output error)" in err
    assert "retry" in err and "warning" not in err and len(err.strip().splitlines()) == 1
    assert _files(run) == before and not list(run.rglob("*.corrupt"))
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "s")]) == 2  # not "damaged" there either
    assert f"checkpoint {newest} could not be read from disk" in capsys.readouterr().err
    assert _files(run) == before


def test_a_whole_file_without_a_checkpoints_keys_is_not_skipped(tmp_path):
    path = tmp_path / "step-00000008.pt"
    torch.save({"model": {"w": torch.randn(4)}}, path)  # whole, but not a training checkpoint
    with pytest.raises(CheckpointError, match="lacks .*ema.*nothing was changed") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, CorruptCheckpoint)


def _member_bytes(data: bytes, member) -> int:
    """Where a stored zip member's bytes start: after its local header, name and extra field."""
    at = member.header_offset
    return at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a changed protocol byte, as intended
def test_any_byte_changed_in_a_checkpoint_is_corrupt_however_torch_would_read_it(tmp_path):
    """torch.load checks no CRC: a changed byte in a tensor loads as a changed weight, and one in the pickle
    may load, or fail as a foreign object or an IndexError. The archive's CRC finds every one, so resume
    skips the checkpoint instead of carrying the damage into every later one."""
    import zipfile

    whole = tmp_path / "whole.pt"
    torch.save({**{k: 0 for k in REQUIRED}, "model": {"w": torch.randn(4)}}, whole)
    data = bytes(whole.read_bytes())
    with zipfile.ZipFile(whole) as archive:
        pickle_member = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
        tensor_member = next(i for i in archive.infolist() if "/data/" in i.filename)
    path = tmp_path / "step-00000008.pt"
    for member in (pickle_member, tensor_member):
        start = _member_bytes(data, member)
        for i in range(member.file_size):
            for flip in (0x01, 0x55, 0xFF):
                damaged = bytearray(data)
                damaged[start + i] ^= flip
                path.write_bytes(bytes(damaged))
                with pytest.raises(CorruptCheckpoint, match=f"{member.filename} fails its CRC check"):
                    load_checkpoint(path)


@pytest.mark.parametrize("field, flip", [(10, 99), (10, 0x08), (10, 0x0C), (6, 0xFF), (8, 0x01)],
                         ids=["compression method", "deflate", "bzip2", "version needed", "encrypted flag"])
def test_a_changed_byte_in_the_zip_directory_is_corrupt_not_a_traceback(tmp_path, field, flip):
    """A changed byte in the archive's central directory can ask for a compression, zip version or encryption
    that torch.save never writes: zipfile raises NotImplementedError or RuntimeError, which escaped as a
    traceback instead of the damage it is (resume skips the file, sample names it); a decompressor it then
    runs over stored bytes raises zlib.error, or an OSError without errno that is no read failure."""
    import zipfile

    whole = tmp_path / "whole.pt"
    torch.save({**{k: 0 for k in REQUIRED}, "model": {"w": torch.randn(4)}}, whole)
    data = bytearray(whole.read_bytes())
    with zipfile.ZipFile(whole) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith("data.pkl")).encode()
    entry = data.index(b"PK\x01\x02")  # central directory entries: data.pkl's is the one to damage
    while data[entry + 46:entry + 46 + len(name)] != name:
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + field] ^= flip
    path = tmp_path / "step-00000008.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="cannot be read"):
        load_checkpoint(path)


def test_a_checkpoint_cut_anywhere_is_skipped_as_corrupt(tmp_path):
    """torch reports a short zip as RuntimeError, EOFError or OSError(EINVAL): all mean corrupt, none stops resume."""
    whole = tmp_path / "whole.pt"
    torch.save({**{k: 0 for k in REQUIRED}, "model": {"w": torch.randn(40_000)}}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "step-00000008.pt"
    for size in (0, 10, 1000, 30_000, 60_000, len(data) // 2, len(data) - 100):
        cut.write_bytes(data[:size])
        with pytest.raises(CorruptCheckpoint):
            load_checkpoint(cut)


def test_resume_refuses_a_run_whose_checkpoints_are_gone(tmp_path, synthetic_data_dir, capsys):
    """Starting again from step 0 would rewrite the log of a run that got further: refused, nothing touched."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"]) == 0
    capsys.readouterr()  # training's own lines (a warning of this short run)
    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["resume", str(run), "--set", "train.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "says the run reached step 4" in err and "holds no checkpoint" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_setting_aside_a_skipped_checkpoint_keeps_the_one_resumed_from(tmp_path):
    """Only the corrupt newer checkpoints leave the listing: the one resume loaded is the run's only good copy."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(_minimal(4, model={"w": torch.arange(4.0)}), folder / "step-00000004.pt")
    (folder / "step-00000008.pt").write_bytes((folder / "step-00000004.pt").read_bytes()[:100])  # cut short
    with pytest.warns(DreamctlWarning, match="step-00000008.pt cannot be read"):
        path, ckpt = load_latest(folder)
    assert path.name == "step-00000004.pt"
    assert [p.name for p in set_aside_newer(folder, step_of(path))] == ["step-00000008.pt.corrupt"]
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000004.pt"]
    assert torch.equal(load_checkpoint(folder / "step-00000004.pt")["model"]["w"], torch.arange(4.0))


def test_a_bad_line_in_the_middle_of_the_metrics_log_is_an_error_naming_it(tmp_path):
    """Only a torn last line (a kill mid-append) may be dropped: a bad line before it would lose the history after it."""
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3\n')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]  # the torn last line is dropped
    log.write_text('{"step": 1}\n{"ste\n{"step": 3}\n{"step": 4}\n')
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl line 2 is not JSON"):
        read_jsonl(log)


def test_no_checkpoint_to_sample_from_says_why(tmp_path):
    """sample/evaluate on a run before its first checkpoint, or with checkpoints/ replaced by a file."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"no checkpoint in {folder}: the run has not written one yet"):
        load_latest(folder)
    folder.rmdir()
    folder.write_text("not a folder")
    with pytest.raises(CheckpointError, match=f"{folder} is a file, not the run's checkpoint folder"):
        load_latest(folder)


def test_resume_clears_only_the_checkpoint_writes_whose_writer_is_gone(tmp_path, synthetic_data_dir):
    """A checkpoint write cut short by a kill leaves its temporary file: resume removes it, but not one
    another node is writing on a shared disk, nor one whose writer still runs (see docs/run-folder.md)."""
    import os
    import socket

    from conftest import dead_pid

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    host, checkpoints = socket.gethostname(), run / "checkpoints"
    killed = checkpoints / f".step-00000008.pt.{dead_pid()}@{host}.tmp"
    running = checkpoints / f".step-00000008.pt.{os.getppid()}@{host}.tmp"
    elsewhere = checkpoints / f".step-00000008.pt.{dead_pid()}@another-{host}.tmp"
    for path in (killed, running, elsewhere):
        path.write_bytes(b"half a checkpoint")
    assert main(["resume", str(run), "--set", "train.max_steps=5"]) == 0
    assert not killed.exists() and running.exists() and elsewhere.exists()


def _files(run) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_another_runs_checkpoint_is_refused_before_resume_changes_anything(tmp_path, synthetic_data_dir, capsys):
    """A checkpoint copied in from a sibling run looked like this run's newest: resume set the run's own
    checkpoint aside as corrupt and cut its log before the weights failed to load, or, with the same
    network, trained on from the wrong weights. Now nothing changes and one line says why."""
    ours, other = tmp_path / "ours", tmp_path / "other"
    assert train(ours, synthetic_data_dir, TINY + ["train.max_steps=2", "train.checkpoint_every=2"], recipe="tiny") == 0
    assert train(other, synthetic_data_dir, TINY + ["train.max_steps=4", "optim.lr=5e-3"], recipe="tiny") == 0
    foreign = torch.load(other / "checkpoints" / "step-00000004.pt", weights_only=True)
    copied = ours / "checkpoints" / "step-00000004.pt"

    def refused(ckpt: dict, said: str) -> None:
        torch.save(ckpt, copied)
        before = _files(ours)
        capsys.readouterr()
        assert main(["resume", str(ours), "--set", "train.max_steps=6"]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and "resuming from" not in err, err
        assert _files(ours) == before

    # a sibling of an lr grid: only settings resume may change differ, so its run id tells it apart
    refused(foreign, f"step-00000004.pt was written by run {foreign['run_id']}, not by this one")
    # a checkpoint from before run ids: its settings do
    older = {k: v for k, v in foreign.items() if k != "run_id"}
    refused({**older, "recipe": older["recipe"].replace("  seed: 0\n", "  seed: 1\n", 1)},
            "disagree on what resume cannot change (train.seed: 0 there, 1 in the checkpoint)")
    refused({**older, "optimizer": {}}, "holds an optimizer state or data position that does not load (KeyError")
    refused({**older, "data_position": {}}, "holds an optimizer state or data position that does not load (KeyError")
    copied.rename(ours / "checkpoints" / "step-00000006.pt")  # renamed newer
    assert main(["resume", str(ours), "--set", "train.max_steps=8"]) == 2
    assert "step-00000006.pt holds step 4, not the step its name says" in capsys.readouterr().err
    (ours / "checkpoints" / "step-00000006.pt").unlink()

    # the run's own checkpoint and a hand-edited recipe.yaml: a setting is refused, a description is not
    recipe = (ours / "recipe.yaml").read_text()
    (ours / "recipe.yaml").write_text(recipe.replace("  seed: 0\n", "  seed: 3\n", 1))
    assert main(["resume", str(ours), "--set", "train.max_steps=4"]) == 2
    assert "recipe.yaml and checkpoint" in capsys.readouterr().err
    (ours / "recipe.yaml").write_text(recipe.replace("description: ", "description: edited. ", 1))
    assert main(["resume", str(ours), "--set", "train.max_steps=4"]) == 0


@pytest.mark.parametrize("edit, said", [
    (lambda c: c.update(step="four"), "holds step of the wrong kind"),
    (lambda c: c.update(recipe=None), "holds recipe of the wrong kind"),
    (lambda c: c.update(ema={"w": [1.0]}), "holds ema of the wrong kind"),
    (lambda c: c.update(step=True), "holds step of the wrong kind"),
])
def test_a_checkpoint_field_of_the_wrong_kind_is_one_error(tmp_path, edit, said):
    ckpt = _minimal(8)
    path = tmp_path / "step-00000008.pt"
    torch.save(ckpt, path)
    assert load_checkpoint(path)["step"] == 8
    edit(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"{said}: not a dreamctl training checkpoint, or one edited by hand"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_network_name_the_first_tensor_that_differs(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ckpt = Checkpoint(model=state, ema=dict(state), optimizer={"state": {0: {"exp_avg": torch.zeros(3, 4)}}},
                      step=8, images_seen=0, wall_time_s=0.0, data_position={}, recipe_yaml="")
    check_fits(ckpt, tmp_path / "c.pt", net)  # fits
    check_moments_fit(ckpt, tmp_path / "c.pt", net)
    with pytest.raises(CheckpointError, match=r"c.pt does not fit the run's network \(ema.1.weight: 2x5 in the "
                                              r"checkpoint, 2x3 in the network\)"):
        check_fits(replace(ckpt, ema={**state, "1.weight": torch.zeros(2, 5)}), tmp_path / "c.pt", net)
    with pytest.raises(CheckpointError, match=r"\(model.1.bias: absent in the checkpoint, 2 in the network\)"):
        check_fits(replace(ckpt, model={k: v for k, v in state.items() if k != "1.bias"}), tmp_path / "c.pt", net)
    with pytest.raises(CheckpointError, match=r"\(optimizer.state.1.exp_avg: 3x4 in the checkpoint, 3 in the network\)"):
        check_moments_fit(replace(ckpt, optimizer={"state": {1: {"exp_avg": torch.zeros(3, 4)}}}), tmp_path / "c.pt",
                          net)
    with torch.device("meta"):  # the twin resume builds: the same shapes, no memory
        twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    check_fits(ckpt, tmp_path / "c.pt", twin)
    check_moments_fit(ckpt, tmp_path / "c.pt", twin)


def test_a_run_whose_data_moved_says_how_to_resume_on_it(tmp_path, synthetic_data_dir, capsys):
    """Not "prepare the folder": the data is intact elsewhere, and resume --set data.path finds it."""
    import shutil

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(synthetic_data_dir, data)
    assert train(run, data, TINY + ["train.max_steps=2"]) == 0
    capsys.readouterr()  # training's own lines (a warning of this short run)
    data.rename(tmp_path / "moved")
    assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 2
    err = capsys.readouterr().err
    assert f"the run's data folder {data} (data.path in {run / 'recipe.yaml'}) is not there: if it moved, " \
           f"`dreamctl resume {run} --data NEW_FOLDER`" in err and len(err.splitlines()) == 1
    assert main(["resume", str(run), "--set", "train.max_steps=4", "--data", str(tmp_path / "moved")]) == 0
    assert json.loads((run / "run.json").read_text())["step"] == 4
    assert yaml.safe_load((run / "recipe.yaml").read_text())["data"]["path"] == str((tmp_path / "moved").resolve())
    assert main(["resume", str(run), "--set", "train.max_steps=6", "--set", f"data.path={tmp_path / 'moved'}"]) == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_a_damaged_run_recipe_says_how_to_restore_it(tmp_path, synthetic_data_dir, capsys):
    """Not only what is wrong with the file: where its content can be found again."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"]) == 0
    capsys.readouterr()  # training's own lines (a warning of this short run)
    saved = torch.load(list_checkpoints(run / "checkpoints")[-1], weights_only=True)["recipe"]
    (run / "recipe.yaml").write_text("bogus: 1\n")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "bogus: unknown key" in err and "restore it from a copy; each checkpoint holds the recipe it was " \
           "trained with (torch.load(CKPT, weights_only=True)['recipe'])" in err and len(err.splitlines()) == 1
    (run / "recipe.yaml").write_text(saved)  # what the message says works
    assert main(["resume", str(run), "--set", "train.max_steps=3"]) == 0


def test_a_bug_while_loading_an_intact_checkpoint_keeps_its_traceback(tmp_path, monkeypatch):
    """Only what an intact file can meet (memory, I/O, torch's complaints) becomes the one-line error of a
    user's problem: a TypeError is a bug of ours, and saying "fix the cause and rerun" would hide it."""
    from dreamctl.training.checkpoints import load_checkpoint

    path = tmp_path / "step-00000004.pt"
    torch.save({"step": 4}, path)

    def buggy(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(torch, "load", buggy)
    with pytest.raises(TypeError, match="a bug"):
        load_checkpoint(path)


@pytest.mark.parametrize("steps, keep, kept", [
    ([10, 20, 26, 30, 40], 3, [20, 30, 40]),  # the stop's 26 goes before the scheduled 20
    ([10, 20, 26], 2, [20, 26]),  # ... but never the newest: a resume goes on from it
    ([10, 20, 26, 30], 3, [10, 20, 30]),
    ([10, 20, 26, 30, 40], 1, [40]),
    ([10, 26], 3, [10, 26]),  # fewer than keep: all kept
    ([10, 20, 25, 30], 3, [20, 25, 30]),  # an old final step (a run lengthened later) is no stop: newest first
])
def test_rotation_removes_a_stops_checkpoint_before_the_scheduled_ones(tmp_path, steps, keep, kept):
    """A stop's checkpoint at step 26 pushed out the scheduled ones of steps 10 and 20, the points of a
    metrics-against-step curve (research review)."""
    from dreamctl.training.checkpoints import Checkpoint, save_checkpoint

    for step in steps:
        save_checkpoint(Checkpoint({}, {}, {}, step, 0, 0.0, {}, ""), tmp_path, keep, first_to_go={26})
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == kept


def test_a_stop_lists_its_checkpoint_for_rotation(tmp_path, synthetic_data_dir):
    """Which checkpoint was a stop's is recorded when it is written (run.json stop_steps), not guessed from its
    step: the last step of a run lengthened later is on no schedule either (diff review #6)."""
    from dreamctl.config import load_recipe
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import resume_run, start_run
    from tiny_runs import CPU

    recipe = load_recipe("tiny", [*TINY, f"data.path={synthetic_data_dir}", "train.checkpoint_every=2",
                                  "train.keep_checkpoints=3", "train.max_steps=6"])
    run = RunDir(tmp_path / "run")
    seen: list[int] = []
    stop = lambda: seen == [1, 2, 3]  # noqa: E731  # after step 3: off the every-2 schedule
    assert start_run(recipe, run, CPU, should_stop=stop,
                     on_event=lambda k, p: seen.append(p["step"]) if k == "step" else None) == "interrupted"
    assert json.loads(run.run_file.read_text())["stop_steps"] == [3]
    assert resume_run(run, CPU) == "finished"  # checkpoints at 4 and 6: the stop's 3 goes, not the scheduled 2
    assert [step_of(p) for p in list_checkpoints(run.checkpoints)] == [2, 4, 6]
