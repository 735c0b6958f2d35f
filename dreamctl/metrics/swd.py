"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN).

Follows ProGAN's metrics/sliced_wasserstein.py: per pyramid level (full resolution down to
16 px) take 128 random 7x7 patches per image, normalise each set's patches per channel, project
on random unit directions (4 repeats of 128 = 512 directions), and average the 1-D
Wasserstein-1 distances of the sorted projections; report x1e3 per level and the mean.
It needs no weights, so it always works; it measures patch statistics (colour and local
texture), not whether an image looks like a face.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from dreamctl.errors import MetricUndefined
from dreamctl.metrics.inception import check_images

# 5-tap binomial filter, as cv2.pyrDown / pyrUp.
_GAUSS = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                     [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0


def pyr_down(x: np.ndarray) -> np.ndarray:
    return scipy.ndimage.convolve(x, _GAUSS[None, None], mode="mirror")[:, :, ::2, ::2]


def pyr_up(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    up = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
    up[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(up, _GAUSS[None, None] * 4.0, mode="mirror")


def laplacian_pyramid(x: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """float32 NCHW -> band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = [x.astype(np.float32)]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] -= pyr_up(pyramid[-1])
    return pyramid


def patch_descriptors(level: np.ndarray, patch_size: int, patches_per_image: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(N*patches_per_image, C, p, p) patches at uniformly random centres fully inside the image."""
    n, c, h, w = level.shape
    r = patch_size // 2
    img = np.repeat(np.arange(n), patches_per_image)[:, None, None, None]
    cy = rng.integers(r, h - r, size=(len(img), 1, 1, 1))
    cx = rng.integers(r, w - r, size=(len(img), 1, 1, 1))
    chan = np.arange(c)[None, :, None, None]
    dy = np.arange(-r, r + 1)[None, None, :, None]
    dx = np.arange(-r, r + 1)[None, None, None, :]
    return level[img, chan, cy + dy, cx + dx]


def normalize_descriptors(desc: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per channel over the whole set, then flatten each patch."""
    desc = desc - desc.mean(axis=(0, 2, 3), keepdims=True)
    desc = desc / (desc.std(axis=(0, 2, 3), keepdims=True) + 1e-8)
    return desc.reshape(len(desc), -1).astype(np.float32)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, dirs_per_repeat: int, dir_repeats: int,
                       rng: np.random.Generator) -> float:
    """Mean over random unit directions of W1 between the 1-D projections of two equal-size sets."""
    results = []
    for _ in range(dir_repeats):
        dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
        dirs = (dirs / np.sqrt(np.sum(dirs ** 2, axis=0, keepdims=True))).astype(np.float32)
        proj_a, proj_b = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        results.append(np.mean(np.abs(proj_a - proj_b)))
    return float(np.mean(results))


def _descriptors(images: np.ndarray, num_levels: int, patch_size: int, patches_per_image: int,
                 rng: np.random.Generator, batch_size: int = 256) -> list[np.ndarray]:
    per_level: list[list[np.ndarray]] = [[] for _ in range(num_levels)]
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)
        for lod, level in enumerate(laplacian_pyramid(x, num_levels)):
            per_level[lod].append(patch_descriptors(level, patch_size, patches_per_image, rng))
    return [normalize_descriptors(np.concatenate(d)) for d in per_level]


# The defaults (Karras et al. 2018's settings), recorded in each evaluation's protocol as swd_settings().
PATCH_SIZE, PATCHES_PER_IMAGE, DIRS_PER_REPEAT, DIR_REPEATS, MIN_RESOLUTION = 7, 128, 128, 4, 16


def swd_settings() -> dict[str, int | str]:
    return {"patch": PATCH_SIZE, "patches_per_image": PATCHES_PER_IMAGE,
            "directions": f"{DIR_REPEATS} x {DIRS_PER_REPEAT}", "min_resolution": MIN_RESOLUTION}


def sliced_wasserstein_distance(images_a: np.ndarray, images_b: np.ndarray, *, seed: int = 0,
                                patch_size: int = PATCH_SIZE, patches_per_image: int = PATCHES_PER_IMAGE,
                                dirs_per_repeat: int = DIRS_PER_REPEAT, dir_repeats: int = DIR_REPEATS,
                                min_resolution: int = MIN_RESOLUTION) -> dict:
    """SWD x1e3 between two uint8 NHWC sets of the same size: {"levels": {res: v}, "average": v}.

    With unequal counts the larger set's patches are subsampled (seeded) to the smaller's."""
    check_images(images_a, "first image set")
    check_images(images_b, "second image set")
    h, w = images_a.shape[1:3]
    if images_b.shape[1:3] != (h, w) or h != w or h < min_resolution or h & (h - 1):
        raise MetricUndefined(f"SWD needs square power-of-two images of the same size, at least {min_resolution} px; "
                        f"got {images_a.shape[1:3]} and {images_b.shape[1:3]}")
    resolutions = [h >> i for i in range(h.bit_length()) if (h >> i) >= min_resolution]
    rng = np.random.default_rng(seed)
    desc_a = _descriptors(images_a, len(resolutions), patch_size, patches_per_image, rng)
    desc_b = _descriptors(images_b, len(resolutions), patch_size, patches_per_image, rng)
    levels = {}
    for res, da, db in zip(resolutions, desc_a, desc_b):
        m = min(len(da), len(db))
        da = da[rng.choice(len(da), m, replace=False)] if len(da) > m else da
        db = db[rng.choice(len(db), m, replace=False)] if len(db) > m else db
        levels[res] = 1e3 * sliced_wasserstein(da, db, dirs_per_repeat, dir_repeats, rng)
    return {"levels": levels, "average": float(np.mean(list(levels.values())))}
