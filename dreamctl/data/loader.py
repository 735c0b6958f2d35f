"""The shard loader: a prepared split as uint8 images, and a batch order that resumes exactly.

    images = open_split("data/celeba64", "train", limit=50_000).to("cuda")  # one transfer
    order = BatchOrder(len(images), batch_size=128, seed=0, rank=rank, world_size=world)
    for batch in order:                   # endless; order.state_dict() saves the position
        x0 = to_model_input(images[batch.indices].to(device), flip=batch.flip)

Batch b of epoch e is a pure function of (seed, e, b): the global batch is slice b of a
permutation drawn from (seed, e), and rank r of w takes the r-th of w equal parts of it.
Flips are drawn the same way from (seed, e, b), so they too survive a resume and do not
depend on the number of ranks. No global RNG is touched.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch

from dreamctl.data.shards import (
    Manifest,
    ShardInfo,
    check_shard,
    manifest_sha256,
    read_manifest,
    read_names,
    shard_error,
    split_shards,
    split_size,
)
from dreamctl.errors import DataError
from dreamctl.runtime import mix_seed

_ORDER, _FLIP = 1, 2  # stream tags: the permutation and the flips never share random numbers


def default_memory_budget() -> int:
    """This process's share of half the machine's memory: a split larger than that is read shard by
    shard. Each of torchrun's processes on this node (LOCAL_WORLD_SIZE) would hold a copy of its own."""
    try:
        half = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        half = 8 << 30
    return half // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


class ImageSet:
    """One split of a prepared folder: `len()` images, indexed by a tensor of indices.

    `images[idx]` returns uint8 (B, H, W, 3) on the set's device. In memory the split is one
    tensor (`.images`); otherwise each call reads the needed rows from the shards through
    h5py handles that belong to the process that opened them.
    """

    def __init__(self, data_dir: Path, split: str, manifest: Manifest, shards: list[ShardInfo], counts: list[int],
                 in_memory: bool):
        self.data_dir, self.split, self.manifest = Path(data_dir), split, manifest
        self.manifest_sha256 = manifest_sha256(manifest)
        self.shards, self.counts = shards, counts  # counts[i] <= shards[i].count (a limit cuts the last)
        self.offsets = np.cumsum([0, *counts])
        self.resolution = manifest.resolution
        self.images: torch.Tensor | None = None
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        if in_memory:
            self.images = self._read_all()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def device(self) -> torch.device:
        return self.images.device if self.images is not None else torch.device("cpu")

    def _read_all(self) -> torch.Tensor:
        out = torch.empty((len(self), self.resolution, self.resolution, 3), dtype=torch.uint8)
        view = out.numpy()
        for shard, count, start in zip(self.shards, self.counts, self.offsets):
            try:
                with h5py.File(shard.path, "r") as f:
                    f["images"].read_direct(view, np.s_[0:count], np.s_[start : start + count])
            except OSError as err:  # h5py's error for a damaged file
                raise shard_error(shard.path, f"cannot be read ({err})") from err
        return out

    def to(self, device: torch.device | str) -> ImageSet:
        """Move the in-memory split to a device once (CelebA-64 train is about 2.3 GiB)."""
        if self.images is None:
            raise DataError(f"split {self.split} of {self.data_dir} is read shard by shard; it cannot be moved to {device}")
        self.images = self.images.to(device)
        return self

    def _file(self, i: int) -> h5py.File:
        if os.getpid() != self._pid:  # a forked child: never read through the parent's handles
            self._files, self._pid = {}, os.getpid()
        if i not in self._files:
            self._files[i] = h5py.File(self.shards[i].path, "r")
        return self._files[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        if self.images is not None:  # non_blocking: a plain copy to CUDA would wait for the GPU's queue every step
            return self.images[indices.to(self.images.device, non_blocking=True)]
        idx = indices.cpu().numpy()
        out = np.empty((len(idx), self.resolution, self.resolution, 3), np.uint8)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for i in np.unique(which):
            rows = idx[which == i] - self.offsets[i]
            unique, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing rows
            out[which == i] = self._file(int(i))["images"][unique][inverse]
        return torch.from_numpy(out)

    def names(self) -> list[str]:
        """The source file name of every image, in index order."""
        return [n for shard, count in zip(self.shards, self.counts) for n in read_names(shard.path)[:count]]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self) -> ImageSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_split(data_dir: Path | str, split: str = "train", limit: int | None = None, memory_budget: int | None = None) -> ImageSet:
    """Open a split, checked against the manifest; in memory when it fits the budget."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    left = split_size(data_dir, split, limit, manifest)
    shards = split_shards(data_dir, manifest, split)
    counts = []
    for shard in shards:
        if left == 0:
            break
        counts.append(min(shard.count, left))
        left -= counts[-1]
    shards = shards[: len(counts)]
    shape = manifest.image_shape
    with ThreadPoolExecutor(min(8, len(shards))) as pool:  # hashing releases the GIL: shards in parallel
        list(pool.map(lambda shard: check_shard(shard, shape), shards))
    budget = default_memory_budget() if memory_budget is None else memory_budget
    return ImageSet(data_dir, split, manifest, shards, counts, in_memory=sum(counts) * int(np.prod(shape)) <= budget)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full global batches per epoch (the last, incomplete one is dropped)."""
    if not 0 < batch_size <= n:
        raise DataError(f"train.batch_size {batch_size} must be between 1 and the number of training images ({n}): "
                        f"lower it (--set train.batch_size=N, N <= {n}) or prepare more images")
    return n // batch_size


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s part of a global batch: the images, flips, timesteps and noise all use this one slice."""
    if batch_size % world_size or not 0 <= rank < world_size:
        counts = ", ".join(str(k) for k in range(1, min(batch_size, 64) + 1) if batch_size % k == 0)
        raise DataError(f"train.batch_size {batch_size} (the global batch) must split evenly over {world_size} "
                        f"processes: run on a number of processes that divides it ({counts}), or, for a new "
                        f"run, set it to a multiple of {world_size} (--set train.batch_size=N)")
    size = batch_size // world_size
    return slice(rank * size, (rank + 1) * size)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """This rank's index tensors for every global batch of an epoch."""
    steps, part = steps_per_epoch(n, batch_size), rank_slice(batch_size, rank, world_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, _ORDER)))
    return list(perm[: steps * batch_size].view(steps, batch_size)[:, part].clone().unbind(0))


def flip_mask(seed: int, epoch: int, batch_index: int, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Which images of this rank's part of a global batch to mirror (bool, CPU)."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, batch_index, _FLIP))
    return torch.randint(0, 2, (batch_size,), generator=g).bool()[rank_slice(batch_size, rank, world_size)]


def to_model_input(images: torch.Tensor, *, flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1], on the images' device."""
    if flip is not None:  # on uint8 (4x less to move than float); torch.where: no host sync on CUDA
        mask = flip.to(images.device, non_blocking=True).view(-1, 1, 1, 1)
        images = torch.where(mask, images.flip(2), images)
    x = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(127.5).sub_(1.0)


class Batch(NamedTuple):
    epoch: int
    index: int  # position in the epoch
    indices: torch.Tensor  # this rank's image indices
    flip: torch.Tensor  # this rank's flip mask


class BatchOrder:
    """Endless batches in the order fixed by (seed, epoch, batch index); resumable.

    `state_dict()` holds the position of the next batch; a run restored from it sees
    exactly the batches it would have seen, with any number of ranks.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.steps = steps_per_epoch(n, batch_size)
        rank_slice(batch_size, rank, world_size)
        self.epoch, self.batch_index = 0, 0
        self._cached: tuple[int, list[torch.Tensor]] | None = None

    def __iter__(self) -> BatchOrder:
        return self

    def __next__(self) -> Batch:
        if self._cached is None or self._cached[0] != self.epoch:
            args = (self.n, self.batch_size, self.seed, self.epoch, self.rank, self.world_size)
            self._cached = (self.epoch, epoch_batches(*args))
        e, b = self.epoch, self.batch_index
        flip = flip_mask(self.seed, e, b, self.batch_size, self.rank, self.world_size)
        batch = Batch(e, b, self._cached[1][b], flip)
        self.batch_index += 1
        if self.batch_index == self.steps:
            self.epoch, self.batch_index = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "n": self.n, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise DataError(f"saved data position has {key}={state[key]}, this run has {getattr(self, key)}; resume with the same data and batch size")
        if not 0 <= state["batch_index"] < self.steps:
            raise DataError(f"saved data position batch_index={state['batch_index']} is outside 0..{self.steps - 1}")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
