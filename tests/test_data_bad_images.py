"""prepare-data on a folder of messy images: unreadable files are skipped, counted and listed;
a split is a hash of the path; missing CelebA files are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import prepare_listing
from dreamctl.data.shards import read_manifest
from dreamctl.data.sources import list_source
from dreamctl.data.synthetic import draw_faces
from dreamctl.errors import DataError, DreamctlWarning


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Four good PNGs in a tree, and a corrupt JPEG, a truncated one, a text file named .jpg."""
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    for i, face in enumerate(draw_faces(4, 40, seed=2)):
        Image.fromarray(face).save(root / ("a/b" if i % 2 else "a") / f"good{i}.png")
    jpeg = root / "a" / "good0.png"
    Image.open(jpeg).save(root / "whole.jpg", quality=95)
    data = (root / "whole.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "corrupt.jpg").write_bytes(data[:20] + bytes(range(256)) * 4)
    (root / "notes.jpg").write_text("not an image at all\n")
    (root / "whole.jpg").unlink()
    (root / "README.txt").write_text("ignored: not an image suffix")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


def test_unreadable_images_are_skipped_counted_and_listed(messy_folder, tmp_path):
    with pytest.warns(DreamctlWarning, match=r"out: split valid and test hold no image: `evaluate --ref valid` "
                                             r"would find nothing there; prepare with a larger --valid-fraction"):
        result = prepare_listing("folder", messy_folder, tmp_path / "out", valid_fraction=0.0, test_fraction=0.0,
                                 crop="center")  # said now, not found out at evaluate
    manifest = read_manifest(tmp_path / "out")
    assert (result.written, result.skipped) == (4, 3) and manifest.counts["train"] == 4
    reasons = {s.name: s.reason for s in manifest.skipped}
    assert set(reasons) == {"truncated.jpg", "corrupt.jpg", "notes.jpg"}
    assert "truncated" in reasons["truncated.jpg"] and "cannot identify" in reasons["notes.jpg"]
    assert manifest.splits["train"].skipped == 3
    with pytest.raises(DataError, match=r"(corrupt|notes|truncated)\.jpg: .*\(--strict\); remove or replace it, or leave out --strict"):
        prepare_listing("folder", messy_folder, tmp_path / "strict", valid_fraction=0.0, test_fraction=0.0, strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()
    # Again over the folder prepared without --strict: its kept shards left those files out, so --strict fails
    # too (it returned "kept 4 images" with exit 0), and the prepared folder is left as it was.
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError, match=r"(corrupt|notes|truncated)\.jpg: .*\(--strict\); remove or replace it and "
                                        r"prepare again with --overwrite, or leave out --strict"):
        prepare_listing("folder", messy_folder, tmp_path / "out", valid_fraction=0.0, test_fraction=0.0, crop="center",
                        strict=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before



def test_cli_names_skipped_images(messy_folder, tmp_path, capsys):
    from dreamctl.cli import main

    assert main(["prepare-data", "--source", "folder", "--root", str(messy_folder), "--out", str(tmp_path / "o"),
                 "--resolution", "16", "--crop", "center", "--valid-fraction", "0", "--test-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 (listed in" in out and "  skipped notes.jpg: " in out and "cannot identify" in out


def test_folder_split_is_a_hash_of_the_path(messy_folder, tmp_path):
    listing = list_source("folder", messy_folder, valid_fraction=0.3, test_fraction=0.3)
    again = list_source("folder", messy_folder, valid_fraction=0.3, test_fraction=0.3)
    assert listing.splits == again.splits
    names = sorted(n for items in listing.splits.values() for n, _ in items)
    assert names == sorted(["a/good0.png", "a/b/good1.png", "a/good2.png", "a/b/good3.png", "corrupt.jpg", "notes.jpg", "truncated.jpg"])


def test_an_image_smaller_than_the_crop_is_skipped_with_the_reason(messy_folder, tmp_path):
    with pytest.raises(DataError, match=r"no image of split train could be read; most common \(4 of 7\): .*smaller than the center:178 crop"):
        prepare_listing("folder", messy_folder, tmp_path / "out", valid_fraction=0.0, test_fraction=0.0, crop="center:178")


def test_options_a_source_does_not_take_are_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="image folder .*afile is a file, not a folder"):
        list_source("folder", tmp_path / "afile")
    with pytest.raises(DataError, match="reads no --root"):
        list_source("synthetic", tmp_path, count=10)
    with pytest.raises(DataError, match="--count is for --source synthetic"):
        list_source("folder", tmp_path, count=10)


def test_empty_folder_and_missing_celeba_files_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images .* found under .*empty"):
        list_source("folder", tmp_path / "empty")
    (tmp_path / "celeba" / "img_align_celeba").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing: .*list_eval_partition\.txt; put CelebA's aligned images in ROOT/img_align_celeba/"):
        list_source("celeba", tmp_path / "celeba")
    (tmp_path / "celeba" / "img_align_celeba").rmdir()
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(DataError, match=r"missing: .*img_align_celeba/ \(or .*img_align_celeba\.zip\)"):
        list_source("celeba", tmp_path / "celeba")
    (tmp_path / "celeba" / "img_align_celeba").mkdir()  # present but empty: every file is missing
    with pytest.raises(DataError, match=r"no image of split train could be read; most common \(1 of 1\): 000001.jpg: listed in the partition file but not found"):
        prepare_listing("celeba", tmp_path / "celeba", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg train\n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:1: expected"):
        list_source("celeba", tmp_path / "celeba")


def test_a_crop_larger_than_celeba_images_fails_before_any_is_decoded(tmp_path, monkeypatch):
    """CelebA's images share one size: the first one's header refuses center:500 before the pool starts."""
    import zipfile

    import dreamctl.data.prepare as prepare

    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    Image.new("RGB", (178, 218)).save(root / "img_align_celeba" / "000001.jpg")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "img_align_celeba.zip", "w") as zf:
        zf.write(root / "img_align_celeba" / "000001.jpg", "img_align_celeba/000001.jpg")
    (zipped / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    monkeypatch.setattr(prepare, "decoded", lambda *a: pytest.fail("decoding started"))
    for source in (root, zipped):
        with pytest.raises(DataError, match=r"--crop center:500 does not fit CelebA's images \(000001\.jpg: image 178x218"):
            prepare_listing("celeba", source, tmp_path / "out", crop="center:500")
    assert not (tmp_path / "out").exists()


def _listed(root: Path) -> set[str]:
    listing = list_source("folder", root, valid_fraction=0.0, test_fraction=0.0)
    return {rel for items in listing.splits.values() for rel, _ in items}


def test_folder_listing_takes_upper_case_suffixes_and_leaves_out_hidden_folders_at_any_depth(tmp_path):
    root = tmp_path / "images"
    for rel in ("a.png", "B.JPG", "c.Jpeg", "sub/d.PNG", "sub/e.WebP",
                ".git/f.png", "sub/.cache/g.png", "sub/.h.png", "deep/x/.hid/i.jpg", "notes.TXT"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"listing does not decode")
    assert _listed(root) == {"a.png", "B.JPG", "c.Jpeg", "sub/d.PNG", "sub/e.WebP"}


def test_a_file_name_that_is_not_utf8_is_skipped_with_the_reason(tmp_path):
    """A Latin-1 name (an old archive's) was a UnicodeEncodeError traceback where its name is stored."""
    import os

    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "ok.png")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
        f.write((root / "ok.png").read_bytes())
    listing = list_source("folder", root, valid_fraction=0.0, test_fraction=0.0)
    assert _listed(root) == {"ok.png"}
    assert [(s.name, s.reason) for s in listing.skipped] == [("caf\\xe9.png", "file name is not valid UTF-8; rename it")]


def test_an_image_in_a_format_other_than_its_suffix_says_is_skipped(tmp_path):
    """Only JPEG, PNG and WebP are decoded (an EPS named .jpg would reach Ghostscript): a BMP named .jpg is
    skipped as unreadable, whatever PIL could make of it."""
    root = tmp_path / "images"
    root.mkdir()
    face = np.zeros((40, 40, 3), np.uint8)
    Image.fromarray(face).save(root / "ok.png")
    Image.fromarray(face).save(root / "bitmap.jpg", format="BMP")
    prepare_listing("folder", root, tmp_path / "out", valid_fraction=0.0, test_fraction=0.0)
    assert [s.name for s in read_manifest(tmp_path / "out").skipped] == ["bitmap.jpg"]


def test_split_fractions_that_leave_no_training_images_are_refused(tmp_path):
    """valid 0.5 + test 0.5 = 1 leaves train empty: refused up front, for every source."""
    with pytest.raises(DataError, match=r"--valid-fraction 0\.5 and --test-fraction 0\.5 must be >= 0 and sum below 1"):
        list_source("synthetic", count=10, valid_fraction=0.5, test_fraction=0.5)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="sum below 1"):
        list_source("folder", tmp_path, valid_fraction=0.3, test_fraction=0.7)
    # just below 1 is allowed: 10 faces, 5 valid, 4 test, 1 to train on
    counts = {s: len(v) for s, v in list_source("synthetic", count=10, valid_fraction=0.5, test_fraction=0.4).splits.items()}
    assert counts == {"train": 1, "valid": 5, "test": 4}


def test_a_limit_or_count_of_zero_is_refused_not_an_empty_dataset():
    """--limit 0 or --count 0 would prepare a folder with nothing to train on."""
    with pytest.raises(DataError, match="--limit must be positive, got 0"):
        list_source("synthetic", count=10, limit=0)
    with pytest.raises(DataError, match="--count must be positive, got 0"):
        list_source("synthetic", count=0)
    assert len(list_source("synthetic", count=10, limit=1, valid_fraction=0, test_fraction=0).splits["train"]) == 1


@pytest.mark.parametrize("option", ["valid_fraction", "test_fraction"])
def test_a_nan_split_fraction_is_refused_for_every_source(messy_folder, option):
    """NaN fails every comparison: it slipped past the check (a folder was prepared with NaN in its manifest,
    the synthetic source crashed rounding it)."""
    with pytest.raises(DataError, match=r"--valid-fraction .* must be >= 0 and sum below 1"):
        list_source("folder", messy_folder, **{option: float("nan")})
    with pytest.raises(DataError, match=r"--valid-fraction .* must be >= 0 and sum below 1"):
        list_source("synthetic", count=10, **{option: float("nan")})
