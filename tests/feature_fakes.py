"""A feature network for the tests, where Inception's weights cannot be downloaded.

The evaluation code takes any `FeatureNet` and labels a network other than Inception as a
stand-in in every result (its id, its file, its table); this one lets the tests exercise that path.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dreamctl.metrics.inception import RESIZE_CLEAN, clean_resize


class StandInFeatureNet:
    """A small deterministic stand-in for the tests: NOT Inception.

    It goes through the same clean resize to 299, pools to 8x8, and applies a seeded random
    projection. Its numbers are not FID/KID/IS and results say so."""

    resize = RESIZE_CLEAN

    def __init__(self, dim: int = 16, num_classes: int = 10, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.w_pool = rng.standard_normal((192, dim)) / np.sqrt(192)
        self.w_out = rng.standard_normal((dim, num_classes))
        self.name = f"stand-in: seeded random projection (dim {dim}, seed {seed}), NOT Inception"
        self.weights_sha256 = hashlib.sha256(self.w_pool.tobytes() + self.w_out.tobytes()).hexdigest()
        self.calls = 0  # images seen, so tests can check that caches are used
        self.last_input_shape: tuple[int, ...] | None = None

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = clean_resize(images)
        self.calls += len(images)
        self.last_input_shape = x.shape
        # 299 = 8 * 37 + 3: drop the border, average 37x37 blocks.
        pooled = x[:, :, :296, :296].reshape(len(x), 3, 8, 37, 8, 37).mean(axis=(3, 5)) / 255.0
        pool = np.tanh((pooled.reshape(len(x), -1) - 0.5) @ self.w_pool * 4.0)
        return pool.astype(np.float32), (pool @ self.w_out).astype(np.float32)
