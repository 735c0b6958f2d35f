"""Fréchet distance on images area-downsampled to 8x8 pixels: a weight-free proxy.

192-d features (8*8*3, values in [0, 1]). On briefly trained CelebA models it ranked samples as a
person would where patch SWD did not (see REFERENCES.md); it is no substitute for FID and is
labelled as what it is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dreamctl.metrics.inception import check_images
from dreamctl.metrics.stats import frechet_distance, gaussian_stats

PIXEL_FEATURES = 8 * 8 * 3  # at the default size: under this many images a set's covariance is rank-deficient


def area_downsample(images: np.ndarray, size: int = 8) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float64 (N, size*size*3) in [0, 1], by averaging pixel blocks."""
    check_images(images)
    n, h, w, _ = images.shape
    if h % size == 0 and w % size == 0:  # exact block means
        x = images.reshape(n, size, h // size, size, w // size, 3).astype(np.float64).mean(axis=(2, 4))
    else:  # PIL's box filter is the area average with fractional weights; float32 'F' images keep precision
        x = np.stack([np.stack([np.asarray(Image.fromarray(img[:, :, c].astype(np.float32))
                                           .resize((size, size), Image.BOX), np.float64) for c in range(3)], axis=-1)
                      for img in images])
    return x.reshape(n, -1) / 255.0


def pixel_frechet_distance(images_a: np.ndarray, images_b: np.ndarray, size: int = 8) -> float:
    """Fréchet distance between Gaussians fitted to the two sets' size x size pixels."""
    mu_a, sigma_a = gaussian_stats(area_downsample(images_a, size))
    mu_b, sigma_b = gaussian_stats(area_downsample(images_b, size))
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
