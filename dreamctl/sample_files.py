"""The files of a sample folder: `<i:06d>.png` per image, `grid.png`, `samples-<N>.npz` (beside sample.json,
which dreamctl.sampling writes)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from dreamctl import atomic
from dreamctl.errors import DataError

PNG = re.compile(r"^(\d{6,})\.png$")


def png_path(folder: Path, i: int) -> Path:
    return folder / f"{i:06d}.png"


def read_png(path: Path, image_size: int) -> np.ndarray | None:
    """The image as uint8 HWC, or None when it is absent, unreadable or not the expected size."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError):  # what PIL raises for absent, truncated or damaged files
        return None
    return arr if arr.shape == (image_size, image_size, 3) and arr.dtype == np.uint8 else None


def write_png(path: Path, image: np.ndarray) -> None:
    # a killed writer never leaves a half PNG under the name; sampling.open_folder sweeps what it leaves
    with atomic.atomic_path(path, sweep_stale=False) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def read_samples(folder: Path, num: int, image_size: int) -> np.ndarray:
    """Images 0..num-1 of a sample folder as uint8 (num, H, W, 3); DataError naming a missing one."""
    out = np.empty((num, image_size, image_size, 3), np.uint8)
    for i in range(num):
        image = read_png(png_path(folder, i), image_size)
        if image is None:
            raise DataError(f"{png_path(folder, i)} is missing or unreadable; rerun the same command to draw it")
        out[i] = image
    return out


def write_npz(folder: Path, images: np.ndarray, path: Path | None = None) -> Path:
    """All images as one uint8 array `images` (N, H, W, 3), written atomically."""
    path = path or folder / f"samples-{len(images)}.npz"
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images)
    return path
