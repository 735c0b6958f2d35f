"""Data benchmark: the shard loader against torchvision ImageFolder on the same images.

Both sides run in this process on one thread (img/s per core) at the same batch size and
end in the same place: a float batch in [-1, 1], centre-cropped, resized and randomly
flipped. The originals are synthetic faces saved as 178 x 218 JPEGs (CelebA's size); they
are smoother than photographs, so they decode faster than CelebA's JPEGs and the ratio
measured here understates the shard loader's lead on real data.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dreamctl.data.loader import BatchOrder, open_split, to_model_input
from dreamctl.data.prepare import prepare_data
from dreamctl.data.sources import list_folder
from dreamctl.data.synthetic import draw_faces


def write_jpeg_originals(folder: Path, count: int, seed: int = 0, quality: int = 95) -> None:
    """`count` faces as 178 x 218 JPEGs (CelebA's size and a typical quality)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, 256):
        faces = draw_faces(min(256, count - start), 96, seed, start=start)
        for i, face in enumerate(faces):
            image = Image.fromarray(face).resize((178, 218), Image.Resampling.BICUBIC)
            image.save(folder / f"{start + i:06d}.jpg", quality=quality)


def _trial(run_epoch, seconds: float) -> float:
    """img/s over whole epochs lasting at least `seconds`."""
    images, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or images == 0:
        images += run_epoch()
    return images / elapsed


def shard_loader_epoch(data_dir: Path, batch_size: int):
    """One epoch of open_split + BatchOrder + to_model_input with flips, as a callable."""
    images = open_split(data_dir, "train")
    order = BatchOrder(len(images), batch_size, seed=0)

    def epoch() -> int:
        for _ in range(order.steps):
            batch = next(order)
            to_model_input(images[batch.indices], flip=batch.flip)
        return order.steps * batch_size

    return epoch


def imagefolder_epoch(root: Path, resolution: int, batch_size: int):
    """One epoch of torchvision ImageFolder + PIL decoding (the usual pipeline), as a callable."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.CenterCrop(178),
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    loader = DataLoader(datasets.ImageFolder(str(root), tf), batch_size, shuffle=True, num_workers=0, drop_last=True)
    return lambda: sum(len(x) for x, _ in loader)


def run_data_bench(
    count: int = 2048, resolution: int = 64, batch_size: int = 128, workers: int | None = None,
    work_dir: Path | None = None, min_seconds: float = 3.0, repeats: int = 3,
) -> dict:
    """Measure prepare-data, the shard loader and ImageFolder on the same `count` images."""
    workers = workers or os.cpu_count() or 1
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="dreamctl-bench-") as tmp:
        originals = Path(tmp) / "originals"
        write_jpeg_originals(originals / "faces", count)  # ImageFolder wants one class folder
        listing = list_folder(originals, valid_fraction=0.0, test_fraction=0.0)
        prepared = prepare_data(listing, Path(tmp) / "shards", crop="center:178", resolution=resolution, workers=workers)
        start = time.perf_counter()
        shard_epoch = shard_loader_epoch(Path(tmp) / "shards", batch_size)
        open_seconds = time.perf_counter() - start
        folder_epoch = imagefolder_epoch(originals, resolution, batch_size)
        # Per core: both sides on one thread. Trials alternate and the best of each counts,
        # so a burst of load from other processes does not favour either side.
        torch.set_num_threads(1)
        try:
            rates = [(_trial(shard_epoch, min_seconds / repeats), _trial(folder_epoch, min_seconds / repeats)) for _ in range(repeats)]
        finally:
            torch.set_num_threads(threads)
    shard_rate, folder_rate = max(r[0] for r in rates), max(r[1] for r in rates)
    prepare_rate = prepared.written / prepared.seconds
    return {
        "images": count,
        "resolution": resolution,
        "batch_size": batch_size,
        "originals": "synthetic faces as 178x218 JPEG (quality 95)",
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "trials": repeats,
        "shard_loader_img_per_s_per_core": round(shard_rate, 1),
        "shard_loader_open_s": round(open_seconds, 3),
        "imagefolder_img_per_s_per_core": round(folder_rate, 1),
        "speedup_per_core": round(shard_rate / folder_rate, 1),
        "target_speedup": 20.0,
        "prepare_workers": workers,
        "prepare_img_per_s": round(prepare_rate, 1),
        "prepare_img_per_s_per_worker": round(prepare_rate / workers, 1),
    }
