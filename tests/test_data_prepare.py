"""prepare-data: sources, crops, shards, manifest, resume, bad input, --verify and the CLI."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import prepare_listing, prepare_synthetic
from dreamctl.data.decode import crop_box, parse_crop, preprocess
from dreamctl.data.prepare import PROGRESS
from dreamctl.data.shards import file_sha256, manifest_sha256, read_manifest, read_names, verify
from dreamctl.data.synthetic import draw_faces
from dreamctl.errors import DataError

SPLIT_OF = {**{i: 0 for i in range(1, 21)}, **{i: 1 for i in range(21, 26)}, **{i: 2 for i in range(26, 31)}}


def _celeba_jpegs() -> dict[str, bytes]:
    import io

    out = {}
    for i, face in enumerate(draw_faces(30, 48, seed=1), 1):
        buf = io.BytesIO()
        Image.fromarray(face).resize((178, 218), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out[f"{i:06d}.jpg"] = buf.getvalue()
    return out


def _partition(names) -> str:
    return "".join(f"{n} {SPLIT_OF[int(n[:6])]}\n" for n in sorted(names))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> dict[str, Path]:
    """A miniature CelebA: 30 JPEGs of 178x218 (20/5/5), as a folder and as a zip."""
    jpegs = _celeba_jpegs()
    folder = tmp_path_factory.mktemp("celeba_folder")
    (folder / "img_align_celeba").mkdir()
    for name, data in jpegs.items():
        (folder / "img_align_celeba" / name).write_bytes(data)
    (folder / "list_eval_partition.txt").write_text(_partition(jpegs))
    zipped = tmp_path_factory.mktemp("celeba_zip")
    with zipfile.ZipFile(zipped / "img_align_celeba.zip", "w") as zf:
        for name, data in jpegs.items():
            zf.writestr(f"img_align_celeba/{name}", data)
    (zipped / "list_eval_partition.txt").write_text(_partition(jpegs))
    return {"folder": folder, "zip": zipped}


def _images(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["images"][()]


# --- sources and crops ---------------------------------------------------------------


def test_celeba_folder_and_zip_give_the_official_splits_and_the_same_shards(celeba, tmp_path):
    a = prepare_listing("celeba", celeba["folder"], tmp_path / "a", shard_size=8)
    b = prepare_listing("celeba", celeba["zip"], tmp_path / "b", shard_size=8, workers=2)  # through the process pool
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert ma["counts"] == {"train": 20, "valid": 5, "test": 5} == mb["counts"]
    assert (a.written, a.skipped, b.written) == (30, 0, 30)
    assert [s["count"] for s in ma["splits"]["train"]["shards"]] == [8, 8, 4]
    assert mb["source"]["container"] == "zip" and ma["source"]["container"] == "folder"
    assert ma["preprocessing"] == {"crop": "center:178", "resolution": 16, "resize": ma["preprocessing"]["resize"]}
    assert "bicubic" in ma["preprocessing"]["resize"]
    assert manifest_sha256(ma) == manifest_sha256(mb)  # same pixels, whichever container
    assert read_names(tmp_path / "a" / "valid-00000.h5") == [f"{i:06d}.jpg" for i in range(21, 26)]
    for sh in ma["splits"]["train"]["shards"]:
        assert file_sha256(tmp_path / "a" / sh["file"]) == sh["sha256"]
        assert _images(tmp_path / "a" / sh["file"]).shape == (sh["count"], 16, 16, 3)


def test_limit_takes_the_first_files_of_each_split_in_name_order(celeba, tmp_path):
    prepare_listing("celeba", celeba["folder"], tmp_path, limit=3)
    assert read_manifest(tmp_path)["counts"] == {"train": 3, "valid": 3, "test": 3}
    assert read_names(tmp_path / "train-00000.h5") == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert read_names(tmp_path / "test-00000.h5") == ["000026.jpg", "000027.jpg", "000028.jpg"]


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")
        out = preprocess(im, "none", 32)
    assert out.shape == (32, 32, 3) and (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))  # not 99% white
    as_int32 = preprocess(Image.fromarray(ramp.astype(np.int32), mode="I"), "none", 32)  # older Pillow's mode
    np.testing.assert_array_equal(as_int32, out)


def test_crop_boxes():
    assert crop_box("center:178", 178, 218) == (0, 20, 178, 198)
    assert crop_box("ddim", 178, 218) == (25, 57, 153, 185)
    assert crop_box("none", 178, 218) == (0, 0, 178, 218)
    assert crop_box("center", 300, 200) == (50, 0, 250, 200)
    assert crop_box("center:100", 300, 200) == (100, 50, 200, 150)
    with pytest.raises(ValueError, match="smaller"):
        crop_box("center:178", 100, 218)
    with pytest.raises(ValueError, match="178x218"):
        crop_box("ddim", 200, 200)
    with pytest.raises(DataError, match="--crop"):
        parse_crop("centre")


def _marker_celeba(root: Path) -> None:
    """One 178x218 image: blue, a green band over rows 0..19, a red square x 25..56, y 57..88."""
    a = np.zeros((218, 178, 3), np.uint8)
    a[..., 2] = 255
    a[:20] = (0, 255, 0)
    a[57:89, 25:57] = (255, 0, 0)
    (root / "img_align_celeba").mkdir(parents=True)
    Image.fromarray(a).save(root / "img_align_celeba" / "000001.jpg", quality=100)
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")


# Red square centre (41, 73) in continuous coordinates, mapped through each crop box and scale.
@pytest.mark.parametrize("crop, box", [("center:178", (0, 20, 178, 198)), ("ddim", (25, 57, 153, 185)), ("none", (0, 0, 178, 218))])
def test_crop_presets_put_a_marker_where_the_box_says(tmp_path, crop, box):
    _marker_celeba(tmp_path / "src")
    prepare_listing("celeba", tmp_path / "src", tmp_path / "out", crop=crop, resolution=64)
    img = _images(tmp_path / "out" / "train-00000.h5")[0].astype(float)
    red = np.clip(img[..., 0] - img[..., 1] - img[..., 2], 0, None)
    ys, xs = np.mgrid[0:64, 0:64]
    cy, cx = (red * ys).sum() / red.sum(), (red * xs).sum() / red.sum()
    sx, sy = 64 / (box[2] - box[0]), 64 / (box[3] - box[1])
    assert cx == pytest.approx((41 - box[0]) * sx - 0.5, abs=0.35)
    assert cy == pytest.approx((73 - box[1]) * sy - 0.5, abs=0.35)
    green_top = img[0, :, 1].mean() > 200 and img[0, :, 2].mean() < 60
    assert green_top == (crop == "none")  # only `none` keeps the rows above the centre square


def test_synthetic_is_deterministic_and_matches_draw_faces(synthetic_data_dir, tmp_path):
    again = prepare_synthetic(tmp_path / "again", workers=2).out_dir  # another process layout, same bytes
    m1, m2 = read_manifest(synthetic_data_dir), read_manifest(again)
    assert m1["counts"] == {"train": 230, "valid": 13, "test": 13}
    assert m1["splits"] == m2["splits"] and manifest_sha256(m1) == manifest_sha256(m2)
    assert np.array_equal(_images(again / "valid-00000.h5"), draw_faces(13, 32, 0, start=230))
    other = prepare_synthetic(tmp_path / "other", seed=1).out_dir
    assert read_manifest(other)["splits"]["train"]["shards"][0]["sha256"] != m1["splits"]["train"]["shards"][0]["sha256"]


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
    (out / ".train-00001.h5.999999.tmp").write_bytes(b"half a shard")  # as a crash mid-write leaves it
    before = (out / "train-00000.h5").stat()
    seen = []
    result = prepare_synthetic(out, on_progress=lambda p: seen.append(p.shard))
    after = (out / "train-00000.h5").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (result.shards_reused, result.shards_written, result.reused) == (1, 4, 100)
    assert "train-00000.h5" not in seen
    assert not (out / PROGRESS).exists() and not (out / ".train-00001.h5.999999.tmp").exists()
    assert read_manifest(out)["splits"] == read_manifest(synthetic_data_dir)["splits"]
    assert prepare_synthetic(out) and verify(out) == []  # a finished folder: rerun is a no-op


def test_a_rerun_rebuilds_a_damaged_shard(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    _flip_byte(out / "train-00001.h5")
    intact = (out / "train-00000.h5").stat().st_mtime_ns
    prepare_synthetic(out)
    assert verify(out) == [] and (out / "train-00000.h5").stat().st_mtime_ns == intact


def test_other_settings_are_refused_unless_overwrite(synthetic_data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, out)
    with pytest.raises(DataError, match=r"preprocessing\.resolution: 32 there, 16 now.*--overwrite"):
        prepare_synthetic(out, resolution=16)
    assert verify(out) == []  # the refused run touched nothing
    prepare_synthetic(out, resolution=16, overwrite=True)
    assert read_manifest(out)["image_shape"] == [16, 16, 3]


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


def test_zip_entries_that_would_escape_are_never_read(celeba, tmp_path):
    jpeg = (celeba["folder"] / "img_align_celeba" / "000001.jpg").read_bytes()
    root = tmp_path / "evil"
    root.mkdir()
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        zf.writestr("img_align_celeba/000001.jpg", jpeg)
        zf.writestr(zipfile.ZipInfo("../000002.jpg"), jpeg)
        zf.writestr(zipfile.ZipInfo("/tmp/000003.jpg"), jpeg)
        zf.writestr(zipfile.ZipInfo("img_align_celeba/../000004.jpg"), jpeg)
    (root / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg 0\n" for i in range(1, 5)))
    prepare_listing("celeba", root, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["counts"]["train"] == 1
    unsafe = {s["name"] for s in manifest["skipped"] if "'..'" in s["reason"]}
    assert unsafe == {"../000002.jpg", "/tmp/000003.jpg", "img_align_celeba/../000004.jpg"}
    assert {s["name"] for s in manifest["skipped"] if "not found" in s["reason"]} == {"000002.jpg", "000003.jpg", "000004.jpg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "out"]  # nothing was extracted
    with pytest.raises(DataError, match=r"\.\./000002\.jpg: zip entry .* \(--strict\)"):
        prepare_listing("celeba", root, tmp_path / "strict", strict=True)


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


def test_sigterm_shuts_the_worker_pool_down(tmp_path):
    """SIGTERM stops prepare-data like Ctrl-C: exit 143, finished shards kept, no worker left running
    (the default handler killed the parent alone, and the pool ran on, re-parented to init)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    mark = uuid.uuid4().hex
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "dreamctl", "prepare-data", "--source", "synthetic", "--count",
                             "20000", "--resolution", "32", "--shard-size", "500", "--workers", "2", "--out", str(out)],
                            env={**os.environ, "DREAMCTL_TEST_MARK": mark}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("train-*.h5")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert "finished shards in" in proc.stderr.read()

    def marked() -> list[str]:
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"DREAMCTL_TEST_MARK={mark}".encode() in environ.read_bytes():
                    found.append(environ.parent.name)
            except OSError:  # gone meanwhile, or not ours to read
                pass
        return found

    deadline = time.monotonic() + 10
    while marked() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked() == []
