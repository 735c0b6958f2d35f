"""Feature networks for the tests, where Inception's weights cannot be downloaded.

The evaluation code takes any `FeatureNet` and labels a network other than Inception as a
stand-in in every result (its id, its file, its table); `StandInFeatureNet` lets the tests exercise
that path. `write_fake_inception` saves a tiny TorchScript with the real file's layout, for the
Inception code path itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from dreamctl.metrics import weights
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


class _FakeInception(torch.nn.Module):
    """The TorchScript Inception's attribute names (`layers`, `output`) and output shape (1008 classes, as
    clean-fid's TorchScript inception-2015-12-05.pt) on a one-layer network."""

    def __init__(self, num_classes: int, with_output: bool):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1))
        self.output = torch.nn.Linear(2048, num_classes) if with_output else torch.nn.Identity()
        if with_output:
            torch.nn.init.constant_(self.output.bias, 3.0)  # must not reach the IS logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.layers(x).flatten(1))


def write_fake_inception(folder: Path, num_classes: int = 1008, with_output: bool = True) -> Path:
    """Save a fake Inception as `folder/inception-2015-12-05.pt`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.script(_FakeInception(num_classes, with_output)).save(str(folder / weights.INCEPTION))
    return folder / weights.INCEPTION
