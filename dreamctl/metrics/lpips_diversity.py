"""LPIPS diversity: mean LPIPS distance over random pairs within one image set.

The lpips package (Zhang et al. 2018) with the AlexNet backbone, version 0.1. Its backbone
normally comes from torchvision's hub cache, which trusts any file found there; here the net is
built with `pnet_rand=True` (no download) and the ImageNet AlexNet weights are loaded from our
weights folder after their hash is checked. `use_dropout` keeps its default True: with False the
linear layers' keys no longer match the bundled file and lpips silently skips them
(it loads with strict=False), so this module checks that every bundled tensor arrived.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from dreamctl.errors import DataError, MetricUndefined, WeightsError
from dreamctl.metrics import weights
from dreamctl.metrics.inception import check_images

MIN_SIZE = 32  # below about 31 px AlexNet's second max-pool has nothing left to pool


def load_alexnet_features(lpips_backbone: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy torchvision AlexNet `features.<i>.*` tensors into lpips' `slice<k>.<i>.*` layers."""
    mapped = {}
    for key in lpips_backbone.state_dict():
        m = re.fullmatch(r"slice\d+\.(\d+)\.(weight|bias)", key)
        if m is None:
            raise WeightsError(f"unexpected layer {key!r} in lpips' AlexNet; lpips 0.1.4 is expected")
        source = f"features.{m.group(1)}.{m.group(2)}"
        if source not in state_dict:
            raise WeightsError(f"{weights.ALEXNET} has no tensor {source!r}; it is not torchvision's AlexNet")
        mapped[key] = state_dict[source]
    lpips_backbone.load_state_dict(mapped, strict=True)


def _check_linear_loaded(model: torch.nn.Module, linear_path: Path) -> None:
    bundled = torch.load(linear_path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    for key, tensor in bundled.items():
        if key not in own or not torch.equal(own[key].cpu(), tensor):
            raise WeightsError(f"lpips did not load {key!r} from {linear_path}; "
                               "its calibrated linear layers would be random")


def build_lpips(weights_dir: Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """lpips.LPIPS(net='alex', version 0.1) with both weight files checked; never downloads."""
    backbone_path = weights.require(weights.ALEXNET, weights_dir)
    linear_path = weights.require(weights.LPIPS_LINEAR, weights_dir)
    import lpips  # after the checks: it pulls in torchvision, seconds on a small CPU
    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated `alexnet(pretrained=False)`; harmless here.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True,
                            model_path=str(linear_path), verbose=False)
    _check_linear_loaded(model, linear_path)
    state = torch.load(backbone_path, map_location="cpu", weights_only=True)
    load_alexnet_features(model.net, state)
    return model.eval().requires_grad_(False).to(device)


def random_pairs(n: int, num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(num_pairs, 2) index pairs with i != j, drawn uniformly."""
    if n < 2:
        raise DataError(f"LPIPS diversity needs at least 2 images, got {n}")
    i = rng.integers(0, n, num_pairs)
    j = (i + rng.integers(1, n, num_pairs)) % n
    return np.stack([i, j], axis=1)


def _to_lpips_input(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    return x.float() / 127.5 - 1.0  # lpips expects [-1, 1]


def lpips_diversity(model: torch.nn.Module, images: np.ndarray, *, num_pairs: int = 1000, seed: int = 0,
                    batch_size: int = 64) -> tuple[float, float]:
    """Mean and std of LPIPS(x_i, x_j) over `num_pairs` seeded random pairs (i != j)."""
    check_images(images)
    if min(images.shape[1:3]) < MIN_SIZE:
        raise MetricUndefined(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE}, "
                              f"got {images.shape[1]}x{images.shape[2]}")
    device = next(model.parameters()).device
    pairs = random_pairs(len(images), num_pairs, np.random.default_rng(seed))
    dists = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            p = pairs[start:start + batch_size]
            a, b = _to_lpips_input(images[p[:, 0]], device), _to_lpips_input(images[p[:, 1]], device)
            dists.append(model(a, b).flatten().float().cpu().numpy())
    d = np.concatenate(dists).astype(np.float64)
    return float(d.mean()), float(d.std())
