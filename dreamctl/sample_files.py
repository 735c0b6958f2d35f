"""The files of a sample folder: `<i:06d>.png` per image, `grid.png`, `samples-<N>.npz` (beside sample.json,
which dreamctl.sampling writes), and whether a folder may take more images (check_folder)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreamctl import atomic
from dreamctl.errors import DataError, RunError
from dreamctl.records import read_json

PNG = re.compile(r"^(\d{6,})\.png$")


ADDED_KEYS = ("weights_sha256",)  # not in a sample.json of an earlier dreamctl: such a folder is taken on its step


def check_folder(folder: Path, wanted: dict[str, Any]) -> None:
    """Refuse to add images to a folder that holds images drawn under other settings."""
    meta = folder / "sample.json"
    atomic.check_folder_path(folder, "--out")
    if meta.is_file():
        old = read_json(meta)
        if "run_id" not in old:  # before run_id, seed S drew image i from seed S + i (now S * 2**20 + i)
            raise RunError(f"{folder} was drawn by an earlier dreamctl (no run_id in its sample.json; other seeds "
                           "per image): delete it or choose another --out, and the images are drawn again")
        count = old.get("num", 0)
        if type(count) is not int or count < 0:  # sample_to_folder keeps the folder whole up to it
            raise RunError(f"{meta} says num {count!r}, not a count of images: restore it, or delete {folder} "
                           "and the images are drawn again")
        clash = {k: v for k, v in wanted.items() if old.get(k) != v and (k in old or k not in ADDED_KEYS)}
        if set(clash) == {"weights_sha256"}:
            raise RunError(f"{folder} holds samples drawn from other weights than checkpoint step "
                           f"{wanted['checkpoint_step']} holds now (written again since, as resume does past a "
                           "corrupt checkpoint): choose another --out or delete it, and the images are drawn again")
        if clash:
            said = ", ".join(f"{k}={old.get(k)!r} (asked {v!r})" for k, v in clash.items())
            raise RunError(f"{folder} holds samples drawn with {said}; choose another --out or delete it")
    elif folder.is_dir():  # not a sample folder: a new or empty one only (a killed call's sample.json write aside)
        # Thousands of numbered PNGs among a user's files, and any grid.png or npz of theirs replaced, otherwise.
        if held := atomic.others_in(folder, _empty_in_practice):
            raise RunError(f"{folder} holds {held} but no sample.json: not a sample folder (or one of unknown "
                           "settings); samples go into a new or empty folder: choose another --out")


def _empty_in_practice(path: Path) -> bool:
    """What a new or empty --out may hold: hidden files (.DS_Store, .gitkeep), a volume root's lost+found,
    and a sample.json (or its temporary file) another rank has just written."""
    name = atomic.temp_target(path.name) or path.name
    return name.startswith(".") or name in ("sample.json", "lost+found")


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
