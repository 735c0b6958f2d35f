"""Feature networks for FID, KID and IS.

`InceptionFeatureNet` is clean-fid's "clean" protocol built from our weights folder: its PIL
bicubic resize to 299 (`cleanfid.resize.build_resizer("clean")`) and its wrapper
`InceptionV3W(folder, download=False)` around the TorchScript `inception-2015-12-05.pt`.
IS logits come from the same forward pass: pool features times the output layer's weight,
without its bias, as StyleGAN2-ADA's `metrics/inception_score.py` (`no_output_bias=True`).
Anything else that satisfies `FeatureNet` is a stand-in and is labelled so in every result.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dreamctl.errors import DataError, WeightsError
from dreamctl.metrics import weights

RESIZE_CLEAN = "clean: PIL bicubic to 299"
INCEPTION_NAME = "inception-2015-12-05"  # what evaluation files call it
# The TorchScript's output layer: TensorFlow's 2015-12-05 Inception has 1008 classes; any other count is another
# network, whose features would give numbers that only look like FID.
INCEPTION_CLASSES, INCEPTION_POOL_DIM = 1008, 2048


@runtime_checkable
class FeatureNet(Protocol):
    """What the metrics need from a feature network."""

    name: str
    weights_sha256: str
    resize: str  # how images reach the network, recorded in the protocol

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, H, W, 3) -> pool features (N, D) and class logits (N, K) or None."""
        ...


def check_images(images: np.ndarray, what: str = "images") -> None:
    """uint8 NHWC with 3 channels and at least one image, or DataError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise DataError(f"{what} must be a uint8 NumPy array (N, H, W, 3), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise DataError(f"{what} must have shape (N, H, W, 3) with N >= 1, got {images.shape}")


def clean_resize(images: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize: uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in [0, 255]."""
    from cleanfid.resize import build_resizer

    check_images(images)
    fn_resize = build_resizer("clean")
    return np.stack([fn_resize(img).transpose(2, 0, 1) for img in images]).astype(np.float32)


class InceptionFeatureNet:
    """clean-fid's TorchScript Inception-v3 from the weights folder; never downloads."""

    resize = RESIZE_CLEAN

    def __init__(self, weights_dir: Path | None = None, device: str = "cpu"):
        import torch
        from cleanfid.inception_torchscript import InceptionV3W

        path = weights.require(weights.INCEPTION, weights_dir)
        try:
            with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.load, which clean-fid uses
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
                net = InceptionV3W(str(path.parent), download=False)
        except (RuntimeError, ValueError, AttributeError) as err:  # torch.jit.load on a bad file
            raise WeightsError(
                f"{path} does not load as clean-fid's TorchScript Inception ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); delete it and download "
                f"{weights.REGISTRY[weights.INCEPTION].url} to {path}; check with `dreamctl weights`"
            ) from err
        output = getattr(net.base, "output", None)
        weight = getattr(output, "weight", None)
        expected = (INCEPTION_CLASSES, INCEPTION_POOL_DIM)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != expected:
            raise WeightsError(
                f"{path} is not clean-fid's TorchScript Inception (inception-2015-12-05.pt): its `output.weight` should be "
                f"{expected}, found {None if weight is None else tuple(weight.shape)}; delete it and download "
                f"{weights.REGISTRY[weights.INCEPTION].url} to {path}; check with `dreamctl weights`"
            )
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        # float64 logits: on CUDA a float32 product may run in TF32 (runtime.setup allows it), which would move
        # IS in its last digits against the reference implementation's full-precision product
        self.output_weight = weight.detach().to(self.device, torch.float64)
        self.weights_sha256 = weights.record_first_use(weights.INCEPTION, weights_dir)
        self.name = f"{INCEPTION_NAME} (clean-fid TorchScript)"  # in the reference cache's key

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(clean_resize(images)).to(self.device)
        with torch.inference_mode():
            pool = self.net(x).float()  # InceptionV3W: (x - 128) / 128, then the pool layers
            logits = pool.double() @ self.output_weight.T  # no bias: StyleGAN2-ADA's IS
        return pool.cpu().numpy(), logits.cpu().numpy()


def batched_features(net: FeatureNet, images: np.ndarray, batch_size: int = 64,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Run `net` over `images` in batches; concatenates pool features and logits."""
    check_images(images)
    pools, logits = [], []
    for start in range(0, len(images), batch_size):
        p, lg = net.features(images[start:start + batch_size])
        pools.append(np.asarray(p))
        logits.append(None if lg is None else np.asarray(lg))
    have_logits = all(lg is not None for lg in logits)
    return np.concatenate(pools), (np.concatenate(logits) if have_logits else None)
