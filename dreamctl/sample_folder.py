"""Sample folders: numbered images drawn into a folder, resumably, and the folder's files.

Image i of a folder is `DIR/<i:06d>.png`, drawn from seed `seed * 2**20 + i` (generate.image_seeds), so a folder
can be filled in any order, by any number of processes, and stopped and rerun: a PNG that is
already there and readable is kept, and only the missing indices are drawn. `sample.json`
records the settings; a folder is never topped up with images drawn under other settings (check_folder).
Beside them: `grid.png` (the first GRID_MAX images) and, when asked, `samples-<N>.npz` (write_npz).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import dreamctl
from dreamctl import atomic
from dreamctl.errors import DataError, RunError
from dreamctl.events import OnEvent, ignore
from dreamctl.generate import check_base_seed, check_count, generate, image_seeds, save_grid
from dreamctl.inference import InferenceModel
from dreamctl.protocol import Sampling
from dreamctl.records import read_json
from dreamctl.runtime import Runtime, barrier, main_first, sum_over_ranks

GRID_MAX = 64


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
    # a killed writer never leaves a half PNG under the name; open_folder sweeps what it leaves
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


def drawn_with(m: InferenceModel, seed: int) -> Sampling:
    """The settings that fix the images `m` draws from base seed `seed` (protocol.py)."""
    return Sampling.of(m.cfg, m.step, seed, m.precision)


def folder_name(m: InferenceModel, seed: int) -> str:
    """`ddim50-eta0-ema-step39000-seed0` (+ `-tstart950`, `-clip`, `-bf16`): one folder per image-fixing setting."""
    return drawn_with(m, seed).folder_name()


def folder_settings(m: InferenceModel, seed: int) -> dict[str, Any]:
    """What must match for a folder's existing images to be reused: they fix every pixel."""
    return {"run_id": m.run_id, **drawn_with(m, seed).to_json(), "image_size": m.image_size,
            "weights_sha256": m.weights_sha256}


def open_folder(m: InferenceModel, folder: Path, seed: int, rt: Runtime) -> dict[str, Any]:
    """Check the folder's settings (every rank, so all fail alike); rank 0 records them before any image
    and clears the temporary files of a killed earlier call."""
    wanted = folder_settings(m, seed)
    check_folder(folder, wanted)
    barrier(rt)  # every rank has looked before rank 0 writes: a new folder's sample.json is no stranger's file
    folder.mkdir(parents=True, exist_ok=True)

    def record() -> None:
        atomic.sweep(folder)
        if not (folder / "sample.json").is_file():
            atomic.write_json(folder / "sample.json", {**wanted, "complete": False})
    main_first(rt, record)  # a failed write stops every rank, not rank 0 alone
    return wanted


def _draw(m: InferenceModel, indices: list[int], folder: Path, seed: int, rt: Runtime, batch_size: int,
          on_event: OnEvent) -> None:
    """Draw and write `indices`, one batch at a time; halve the batch when the GPU runs out of memory.

    A batch's PNGs are encoded and written by threads while the next batch is drawn (zlib releases
    the GIL), so the GPU does not wait for the disk; stopping waits for the ones under way.
    """
    done = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        writing: list[Future] = []
        while done < len(indices):
            chunk = indices[done:done + batch_size]
            # once a full batch has compiled, a short last one is padded to its shape rather than compiled again
            pad_to = batch_size if m.cfg.compile and done > 0 else None
            try:
                images = generate(m.net, m.schedule, image_seeds(seed, chunk), image_size=m.image_size, cfg=m.cfg,
                                  device=rt.device, batch_size=batch_size, pad_to=pad_to)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                oom = True
            else:
                oom = False
                for future in writing:  # the previous batch's files: a failed write surfaces here
                    future.result()
                writing = [pool.submit(write_png, png_path(folder, i), image)
                           for i, image in zip(chunk, images.numpy())]
                done += len(chunk)
                on_event("sample_progress", {"drawn": done, "missing": len(indices), "batch_size": batch_size})
            if oom and rt.device.type == "cuda":
                torch.cuda.empty_cache()  # outside the except block, once the failed batch's tensors are freed
        for future in writing:
            future.result()


def sample_to_folder(m: InferenceModel, folder: Path, num: int, *, seed: int, rt: Runtime,
                     on_event: OnEvent = ignore) -> dict[str, Any]:
    """Make `folder` hold images 0..num-1; returns this call's sample.json record (on every rank): its
    `num` is how many images the folder holds, which an earlier, larger call may have made more. A call
    that draws nothing leaves the file's timing (created, wall_time_s, drawn_now) that of the drawing call.

    Under torchrun rank r draws the missing indices i with i % world_size == r; rank 0 writes
    sample.json and the grid once all ranks are done.
    """
    check_count(num)  # before the folder is touched
    check_base_seed(seed)
    started = time.perf_counter()
    wanted = open_folder(m, folder, seed, rt)
    barrier(rt)
    # An earlier, larger call may have finished more images: keep the folder whole up to that count.
    before = read_json(folder / "sample.json")
    held = max(num, before.get("num", 0) if before.get("complete") else 0)
    mine = range(rt.rank, held, rt.world_size)
    missing = [i for i in mine if read_png(png_path(folder, i), m.image_size) is None]
    kept = held - sum_over_ranks(len(missing), rt)  # over every rank: the line speaks of the folder
    on_event("sample_start", {"folder": str(folder), "num": num, "held": held, "kept": kept, "missing": len(missing)})
    _draw(m, missing, folder, seed, rt, m.cfg.batch_size, on_event)
    barrier(rt)
    drawn = sum_over_ranks(len(missing), rt)
    record = {**wanted, "complete": True, "num": held, "checkpoint": m.checkpoint.name, "device": str(rt.device),
              "world_size": rt.world_size, "drawn_now": drawn, "dreamctl_version": dreamctl.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wall_time_s": round(time.perf_counter() - started, 2)}
    drawing = {} if drawn or not before.get("complete") else {  # what drawing the folder took, not this look at it
        k: before[k] for k in ("created", "wall_time_s", "drawn_now", "device", "world_size") if k in before}

    def finish() -> None:  # through main_first, as every write of rank 0: a full disk here stops every rank
        save_grid(read_samples(folder, min(held, GRID_MAX), m.image_size), folder / "grid.png")
        atomic.write_json(folder / "sample.json", {**record, **drawing})
    main_first(rt, finish)
    on_event("sample_done", {"folder": str(folder), "drawn": len(missing)})
    return record
