"""prepare-data on CelebA's own layout: the folder and the zip, the official splits, the crop presets,
16-bit images, and zip entries that would escape the folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import prepare_listing, shard_images
from dreamctl.atomic import file_sha256
from dreamctl.data.decode import crop_box, parse_crop, preprocess
from dreamctl.data.shards import manifest_sha256, read_manifest, read_names
from dreamctl.data.synthetic import draw_faces
from dreamctl.errors import DataError

# Several fixtures list train images only: prepared as listed, with a warning (test_a_partition_file_is_read_strictly).
pytestmark = pytest.mark.filterwarnings("ignore:.*list_eval_partition.txt lists no valid:dreamctl.errors.DreamctlWarning")

SPLIT_OF = {**{i: 0 for i in range(1, 21)}, **{i: 1 for i in range(21, 26)}, **{i: 2 for i in range(26, 31)}}


def _celeba_jpegs() -> dict[str, bytes]:
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



def test_celeba_folder_and_zip_give_the_official_splits_and_the_same_shards(celeba, tmp_path):
    a = prepare_listing("celeba", celeba["folder"], tmp_path / "a", shard_size=8)
    b = prepare_listing("celeba", celeba["zip"], tmp_path / "b", shard_size=8, workers=2)  # through the process pool
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert ma.counts == {"train": 20, "valid": 5, "test": 5} == mb.counts
    assert (a.written, a.skipped, b.written) == (30, 0, 30)
    assert [s.count for s in ma.splits["train"].shards] == [8, 8, 4]
    assert mb.source["container"] == "zip" and ma.source["container"] == "folder"  # an extra field, kept
    assert ma.preprocessing == {"crop": "center:178", "resolution": 16, "resize": ma.preprocessing["resize"]}
    assert "bicubic" in ma.preprocessing["resize"]
    assert manifest_sha256(ma) == manifest_sha256(mb)  # same pixels, whichever container
    assert read_names(tmp_path / "a" / "valid-00000.h5") == [f"{i:06d}.jpg" for i in range(21, 26)]
    for sh in ma.splits["train"].shards:
        assert file_sha256(tmp_path / "a" / sh.file) == sh.sha256
        assert shard_images(tmp_path / "a" / sh.file).shape == (sh.count, 16, 16, 3)


def test_limit_takes_the_first_files_of_each_split_in_name_order(celeba, tmp_path):
    prepare_listing("celeba", celeba["folder"], tmp_path, limit=3)
    assert read_manifest(tmp_path).counts == {"train": 3, "valid": 3, "test": 3}
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
    img = shard_images(tmp_path / "out" / "train-00000.h5")[0].astype(float)
    red = np.clip(img[..., 0] - img[..., 1] - img[..., 2], 0, None)
    ys, xs = np.mgrid[0:64, 0:64]
    cy, cx = (red * ys).sum() / red.sum(), (red * xs).sum() / red.sum()
    sx, sy = 64 / (box[2] - box[0]), 64 / (box[3] - box[1])
    assert cx == pytest.approx((41 - box[0]) * sx - 0.5, abs=0.35)
    assert cy == pytest.approx((73 - box[1]) * sy - 0.5, abs=0.35)
    green_top = img[0, :, 1].mean() > 200 and img[0, :, 2].mean() < 60
    assert green_top == (crop == "none")  # only `none` keeps the rows above the centre square



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
    assert manifest.counts["train"] == 1
    unsafe = {s.name for s in manifest.skipped if "'..'" in s.reason}
    assert unsafe == {"../000002.jpg", "/tmp/000003.jpg", "img_align_celeba/../000004.jpg"}
    assert {s.name for s in manifest.skipped if "not found" in s.reason} == {"000002.jpg", "000003.jpg", "000004.jpg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "out"]  # nothing was extracted
    with pytest.raises(DataError, match=r"\.\./000002\.jpg: zip entry .* \(--strict\); leave out --strict") as info:
        prepare_listing("celeba", root, tmp_path / "strict", strict=True)
    assert "remove or replace it" not in str(info.value)  # the fix for an image that would not decode, not this


def test_center_crop_rounds_odd_margins_as_torchvision_does():
    """The study's preprocessing is torchvision's CenterCrop: a 1 px shift on odd margins changes every image."""
    # torchvision: left = int(round((width - n) / 2.0)), Python's round (half to even); boxes worked out by hand
    # (torchvision itself is not imported: it costs seconds).
    cases = [((67, 70, 64), (2, 3, 66, 67)),  # margins 3 and 6: round(1.5) = 2
             ((103, 64, 64), (20, 0, 84, 64)),  # margin 39: round(19.5) = 20
             ((64, 71, 64), (0, 4, 64, 68)),  # margin 7: round(3.5) = 4
             ((64, 69, 64), (0, 2, 64, 66))]  # margin 5: round(2.5) = 2
    rng = np.random.default_rng(0)
    for (width, height, n), box in cases:
        assert crop_box(f"center:{n}", width, height) == box
        a = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        left, top, right, bottom = box  # no resize at n: the output is the crop itself
        assert np.array_equal(preprocess(Image.fromarray(a), f"center:{n}", n), a[top:bottom, left:right])


def test_exif_orientation_is_applied_before_the_crop(tmp_path):
    """A phone photo stored sideways (EXIF Orientation 6: rotate 90 degrees clockwise) must come out upright."""
    a = np.random.default_rng(1).integers(0, 256, (20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "sideways.png", exif=exif)
    upright = np.rot90(a, k=-1)  # clockwise: 20 wide, 40 high
    with Image.open(tmp_path / "sideways.png") as im:
        out = preprocess(im, "center", 20)
    assert np.array_equal(out, upright[10:30])  # the centred 20 x 20 of the upright image


def test_resize_is_the_one_the_manifest_records():
    """PIL bicubic with reducing_gap=None, as RESIZE says: other filters or a box pre-reduction change the pixels."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)  # a CelebA-sized image, noise so every filter differs
    image = Image.fromarray(a)
    want = np.asarray(image.crop((0, 20, 178, 198)).resize((32, 32), Image.Resampling.BICUBIC, reducing_gap=None))
    assert np.array_equal(preprocess(image, "center:178", 32), want)


def test_a_zip_is_read_from_its_image_folder_or_its_top_level_only(tmp_path):
    """Another folder of the zip (thumbnails, a second copy) must not stand in for a listed image."""
    from dreamctl.data.sources import list_source

    root = tmp_path / "celeba"
    root.mkdir()
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        zf.writestr("img_align_celeba/000001.jpg", b"a")
        zf.writestr("000002.jpg", b"b")  # a zip of the images without their folder
        zf.writestr("thumbnails/000003.jpg", b"c")
        zf.writestr("img_align_celeba/deeper/000004.jpg", b"d")
    (root / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg 0\n" for i in range(1, 5)))
    listing = list_source("celeba", root)
    assert listing.splits["train"] == [("000001.jpg", "img_align_celeba/000001.jpg"), ("000002.jpg", "000002.jpg")]
    assert {s.name for s in listing.skipped if "not found" in s.reason} == {"000003.jpg", "000004.jpg"}


def test_a_damaged_or_foreign_zip_member_is_skipped_as_an_unreadable_image(celeba, tmp_path):
    """A member whose deflated bytes are damaged (a bad download), or that is encrypted: that image is skipped
    with the reason, as a corrupt JPEG is, instead of a zlib or RuntimeError traceback."""
    jpegs = _celeba_jpegs()
    root = tmp_path / "damaged"
    root.mkdir()
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in jpegs.items():
            zf.writestr(f"img_align_celeba/{name}", data if name != "000005.jpg" else b"not an image at all")
        infos = {i.filename: i for i in zf.infolist()}
    (root / "list_eval_partition.txt").write_text(_partition(jpegs))
    raw = bytearray((root / "img_align_celeba.zip").read_bytes())
    hit = infos["img_align_celeba/000002.jpg"]
    start = hit.header_offset + 30 + len(hit.filename) + len(hit.extra)  # the member's compressed data
    raw[start + 10:start + 60] = bytes(range(50))
    name = b"img_align_celeba/000003.jpg"
    central = raw.index(b"PK\x01\x02", raw.index(name, infos[name.decode()].header_offset + 31) - 46)
    assert raw[central + 46:central + 46 + len(name)] == name  # its entry in the central directory
    for at in (infos[name.decode()].header_offset + 6, central + 8):
        raw[at] |= 1  # the encryption flag, in the local and the central header
    (root / "img_align_celeba.zip").write_bytes(bytes(raw))
    result = prepare_listing("celeba", root, tmp_path / "out", workers=1)
    reasons = {s.name: s.reason for s in read_manifest(tmp_path / "out").skipped}
    assert set(reasons) == {"000002.jpg", "000003.jpg", "000005.jpg"} and result.written == 27
    assert "zip member img_align_celeba/000002.jpg" in reasons["000002.jpg"]
    # whole bytes that are no image: the member named, not PIL's "<_io.BytesIO object at 0x...>"
    assert reasons["000005.jpg"] == ("UnidentifiedImageError: cannot identify image file "
                                     "img_align_celeba/000005.jpg in the zip")



def test_a_zip_member_too_large_for_an_image_is_not_read(tmp_path):
    """A member inflating to more than any image (65 MiB of zeros, 64 KB compressed: a zip bomb in
    miniature) is skipped before it is read into memory, with the reason."""
    from dreamctl.data.decode import MAX_MEMBER_BYTES

    jpegs = _celeba_jpegs()
    root = tmp_path / "bomb"
    root.mkdir()
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in jpegs.items():
            zf.writestr(f"img_align_celeba/{name}", data if name != "000004.jpg" else bytes(MAX_MEMBER_BYTES + 1))
    (root / "list_eval_partition.txt").write_text(_partition(jpegs))
    result = prepare_listing("celeba", root, tmp_path / "out", workers=1)
    reasons = {s.name: s.reason for s in read_manifest(tmp_path / "out").skipped}
    assert result.written == 29 and list(reasons) == ["000004.jpg"]
    assert f"inflates to {MAX_MEMBER_BYTES + 1:,} bytes, more than the 64 MiB read for one image" in reasons["000004.jpg"]

def test_a_partition_file_is_read_strictly(tmp_path):
    """A name listed twice would move an image between splits by its last line; a byte-order mark would
    hide the first name; a file cut short (train only) is prepared as listed, but said."""
    from dreamctl.data.sources import read_partition
    from dreamctl.errors import DreamctlWarning

    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 1\n000001.jpg 2\n")
    with pytest.raises(DataError, match=r"txt:3: 000001\.jpg is listed again \(first on line 1\)"):
        read_partition(partition)
    partition.write_bytes("\ufeff000001.jpg 0\r\n000002.jpg 1\r\n000003.jpg 2\r\n".encode())
    assert read_partition(partition) == {"000001.jpg": "train", "000002.jpg": "valid", "000003.jpg": "test"}
    partition.write_text("000001.jpg 0\n000002.jpg 0\n")
    with pytest.warns(DreamctlWarning, match="lists no valid and no test images .2 in all; CelebA's lists 202,599"):
        assert read_partition(partition) == {"000001.jpg": "train", "000002.jpg": "train"}


def test_an_empty_partition_file_is_refused_with_the_layout_help(tmp_path):
    """A blank list_eval_partition.txt (a download cut short) is an error, not a dataset of no images."""
    from dreamctl.data.sources import list_source

    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "list_eval_partition.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt lists no images; put CelebA's aligned images"):
        list_source("celeba", tmp_path)


def test_a_partition_file_that_is_not_text_or_malformed_is_one_line(tmp_path, capsys):
    """Random bytes under the partition file's name were a UnicodeDecodeError traceback; a bad line names
    itself, cut short (it may be a whole file's worth of bytes)."""
    from dreamctl.cli import main
    from dreamctl.data.sources import list_source

    (tmp_path / "img_align_celeba").mkdir()
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_bytes(b"\x85\xff\x00binary" * 20)
    assert main(["prepare-data", "--source", "celeba", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "list_eval_partition.txt is not a text file (invalid start byte at byte 0); put CelebA's" in err
    assert "\n" not in err and not (tmp_path / "out").exists()
    partition.write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:2: expected '<file name> 0\|1\|2', got '000002\.jpg 3'$"):
        list_source("celeba", tmp_path)
    partition.write_text("000001.jpg 0\n" + "x" * 10_000 + "\n")
    with pytest.raises(DataError, match=r":2: expected .*, got 'x{60}'$"):
        list_source("celeba", tmp_path)
