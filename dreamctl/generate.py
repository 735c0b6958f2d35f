"""The one place seeds become images: progress grids, `sample`, `evaluate` and `ablate`.

Image i is drawn from its own generator seeded with seeds[i]: first its initial noise,
then, for stochastic samplers, the noise of every step. So an image's noise depends only on
its seed, whatever the batch size or the number of processes. Its pixels do too, up to float
rounding: convolution kernels sum in an order that depends on the batch size and the thread
count (and on the GPU, the algorithm chosen), which can move a pixel by one 8-bit level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from dreamctl.atomic import atomic_path
from dreamctl.config.schema import IMAGES_PER_SEED, MAX_BASE_SEED, SampleConfig
from dreamctl.diffusion.samplers import noise_rows, sample, to_device
from dreamctl.diffusion.schedule import NoiseSchedule
from dreamctl.errors import ConfigError


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1], NCHW float -> NHWC uint8 on the CPU."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def check_base_seed(base: int) -> None:
    if not 0 <= base <= MAX_BASE_SEED:
        raise ConfigError(f"seed {base} is outside 0..{MAX_BASE_SEED}; pass --seed in that range")


def check_count(num: int) -> None:
    """A set of `num` images fits one base seed (image_seeds); checked before drawing, not at image 2**20."""
    if num < 1:
        raise ConfigError(f"--num {num}: draw at least 1 image")
    if num > IMAGES_PER_SEED:
        raise ConfigError(f"--num {num}: a set holds 1 to {IMAGES_PER_SEED:,} images (one base seed names that many); "
                          "draw fewer, or split the set over several --seed values")


def image_seeds(base: int, indices: Iterable[int]) -> list[int]:
    """The seed of image i under base seed `base`: base * 2**20 + i.

    Sets drawn under different base seeds share no image (with base + i, seed 1's image i would
    be seed 0's image i + 1, and two "independent" 5,000-image sets would share 4,999).
    """
    check_base_seed(base)
    seeds = [base * IMAGES_PER_SEED + i for i in indices]
    if seeds and max(seeds) >= (base + 1) * IMAGES_PER_SEED:
        raise ConfigError(f"a base seed names at most {IMAGES_PER_SEED:,} images; draw fewer or split the set")
    return seeds


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_noise(generators: Sequence[torch.Generator], image_size: int) -> Tensor:
    """x_T for each image from its own generator (drawn on the CPU, the same on every device)."""
    return noise_rows(generators, (3, image_size, image_size))


@torch.no_grad()
def generate(model: nn.Module, schedule: NoiseSchedule, seeds: Sequence[int], *, image_size: int,
             cfg: SampleConfig, device: torch.device, batch_size: int | None = None,
             pad_to: int | None = None) -> Tensor:
    """Draw one image per seed with the sampler of `cfg`; returns NHWC uint8 on the CPU.

    `pad_to`: a batch shorter than this is padded with copies of its last seed, and the copies are
    dropped: a compiled network compiles again for every new batch shape (a minute on a large model).
    """
    batch_size = batch_size or cfg.batch_size
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        pad = max((pad_to or 0) - len(chunk), 0)
        gens = seed_generators(chunk + chunk[-1:] * pad)
        x_T = to_device(initial_noise(gens, image_size), device)
        x0 = sample(model, schedule, x_T, steps=cfg.steps, eta=cfg.eta, method=cfg.sampler,
                    generator=gens, clip_x0=cfg.clip_x0, t_start=cfg.t_start)
        out.append(to_uint8(x0[:len(chunk)]))
    return torch.cat(out) if out else torch.empty(0, image_size, image_size, 3, dtype=torch.uint8)


def grid(images: Tensor | np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """NHWC uint8 images tiled into one HWC uint8 picture with a white border."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return canvas


def save_grid(images: Tensor | np.ndarray, path: Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write a grid PNG atomically; `scale` enlarges small images (nearest) so they can be seen, by
    default to about 128 px each (4x for 32 px faces, none from 128 px up)."""
    images = np.asarray(images)
    scale = max(1, 128 // images.shape[1]) if scale is None else scale
    picture = Image.fromarray(grid(images, nrow))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
