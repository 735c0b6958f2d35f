"""Decode, crop and resize: the work a prepare-data worker does on one chunk of items.

Crop presets (boxes are PIL's (left, upper, right, lower)):
- `center:N` a centred N x N square (CelebA's 178 x 218 -> (0, 20, 178, 198), the study's);
  `center` the largest centred square;
- `ddim` the 128 x 128 box centred at (89, 121) of a 178 x 218 CelebA image, (25, 57, 153, 185),
  as in the DDIM paper's CelebA models;
- `none` the whole image, resized without keeping its aspect ratio (as DDPM-IP did).
Resizing is PIL bicubic with antialiasing (a filter as wide as the reduction).
"""

from __future__ import annotations

import io
import lzma
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamctl.data.sources import Item, Skip
from dreamctl.errors import DataError

RESIZE = "PIL bicubic, antialiased (Image.resize, reducing_gap=None), after EXIF orientation"
CELEBA_SIZE = (178, 218)
DDIM_BOX = (25, 57, 153, 185)
# The formats of the image suffixes a source lists: PIL tries no other decoder (an EPS named .jpg would
# reach Ghostscript), and such a file is skipped as unreadable.
FORMATS = ("JPEG", "PNG", "WEBP")
# A zip member is read whole into memory: one that inflates to more than this (a zip bomb, or not an
# image) is skipped unread. CelebA's are about 10 KB; a 4K PNG is a few tens of MB.
MAX_MEMBER_BYTES = 64 << 20
# What a single unreadable file raises inside PIL/zipfile; anything else is a bug and propagates.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, Image.DecompressionBombError)


def parse_crop(text: str) -> str:
    """Check a crop preset and return it in canonical form."""
    if text in ("center", "ddim", "none"):
        return text
    if text.startswith("center:") and text[7:].isdigit() and int(text[7:]) > 0:
        return f"center:{int(text[7:])}"
    raise DataError(f"--crop {text!r} is not a preset; use center:178, center:N, center, ddim or none")


def crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The box a preset cuts from a width x height image; ValueError when it does not fit."""
    if crop == "none":
        return (0, 0, width, height)
    if crop == "ddim":
        if (width, height) != CELEBA_SIZE:
            raise ValueError(f"the ddim crop needs a 178x218 CelebA image, got {width}x{height}")
        return DDIM_BOX
    n = min(width, height) if crop == "center" else int(crop.split(":")[1])
    if n > width or n > height:
        raise ValueError(f"image {width}x{height} is smaller than the {crop} crop")
    # Rounding as torchvision's CenterCrop does, so the study's preprocessing is reproduced.
    left, top = int(round((width - n) / 2.0)), int(round((height - n) / 2.0))
    return (left, top, left + n, top + n)


def preprocess(image: Image.Image, crop: str, resolution: int) -> np.ndarray:
    """Crop then resize one decoded image to a (resolution, resolution, 3) uint8 array."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit greyscale (I;16, or I in older Pillow): convert("RGB") clips at 255
        values = np.asarray(image).astype(np.int64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values >> 8
        image = Image.fromarray(values.clip(0, 255).astype(np.uint8))
    image = image.convert("RGB")
    image = image.crop(crop_box(crop, *image.size))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


_zips: dict[tuple[int, str], zipfile.ZipFile] = {}


def _zip(path: str) -> zipfile.ZipFile:
    # One handle per process: opening CelebA's zip reads a 200k-entry directory, so it is
    # kept; keyed by pid so that a forked child never reads through its parent's handle.
    key = (os.getpid(), path)
    if key not in _zips:
        _zips[key] = zipfile.ZipFile(path)
    return _zips[key]


def close_zips() -> None:
    """Close this process's zip handles."""
    for key in [k for k in _zips if k[0] == os.getpid()]:
        _zips.pop(key).close()


@dataclass(frozen=True)
class Chunk:
    """A worker's task: consecutive items of one split and how to turn them into pixels."""

    kind: str
    root: str | None
    zip_path: str | None
    seed: int
    crop: str
    resolution: int
    split: str
    items: list[Item]


@dataclass
class ChunkResult:
    images: np.ndarray  # (n, H, W, 3) uint8, n <= len(items)
    names: list[str]
    skipped: list[Skip]


def open_image(root: str | None, zip_path: str | None, ref: str) -> Image.Image:
    """A source image, from its folder or from the zip, with only its header read (PIL decodes on load)."""
    if zip_path:
        archive = _zip(zip_path)
        # zipfile stops inflating at the size the header gives, so checking that bounds what is read
        if (size := archive.getinfo(ref).file_size) > MAX_MEMBER_BYTES:
            raise zipfile.BadZipFile(f"zip member {ref} inflates to {size:,} bytes, more than the "
                                     f"{MAX_MEMBER_BYTES >> 20} MiB read for one image; not read")
        try:
            data = archive.read(ref)
        # a damaged member (zlib), an encrypted one (RuntimeError), a compression zipfile cannot undo (Deflate64):
        # that one image is unreadable, as a corrupt JPEG is
        except (zlib.error, RuntimeError, NotImplementedError, lzma.LZMAError) as err:
            raise zipfile.BadZipFile(f"zip member {ref}: {err}") from err
        try:
            return Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:  # PIL names its BytesIO ("<_io.BytesIO object at 0x...>"): name the member
            raise UnidentifiedImageError(f"cannot identify image file {ref} in the zip") from None
    return Image.open(Path(root or "") / ref, formats=FORMATS)


def _open(chunk: Chunk, ref: str) -> Image.Image:
    image = open_image(chunk.root, chunk.zip_path, ref)
    image.load()  # decode now: a truncated file fails here, not later
    return image


def _draw_chunk(chunk: Chunk) -> ChunkResult:
    from dreamctl.data.synthetic import draw_faces

    refs = [int(ref) for _, ref in chunk.items]
    if refs != list(range(refs[0], refs[0] + len(refs))):
        raise AssertionError("synthetic chunks are contiguous index ranges")
    images = draw_faces(len(refs), chunk.resolution, chunk.seed, start=refs[0])
    return ChunkResult(images, [name for name, _ in chunk.items], [])


def load_chunk(chunk: Chunk) -> ChunkResult:
    """Decode, crop and resize every item; unreadable ones become skips with a reason."""
    if chunk.kind == "synthetic":
        return _draw_chunk(chunk)
    arrays, names, skipped = [], [], []
    for name, ref in chunk.items:
        try:
            with _open(chunk, str(ref)) as image:
                arrays.append(preprocess(image, chunk.crop, chunk.resolution))
            names.append(name)
        except UNREADABLE as err:
            skipped.append(Skip(chunk.split, name, f"{type(err).__name__}: {err}"))
    shape = (len(arrays), chunk.resolution, chunk.resolution, 3)
    images = np.stack(arrays) if arrays else np.zeros(shape, np.uint8)
    return ChunkResult(images, names, skipped)
