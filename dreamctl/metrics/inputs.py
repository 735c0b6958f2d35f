"""Which of the wanted metrics can be computed, and with what: decided once, before any image is scored.

`metric_inputs` loads the networks the metrics need (the feature network for fid, kid and is; LPIPS's AlexNet)
and gives every metric that cannot be computed its one reason. `evaluate_run` refuses on those reasons before it
draws a sample, and `evaluate_image_sets` reports them as {"missing": reason}: both read the same decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dreamctl.errors import WeightsError
from dreamctl.metrics import weights
from dreamctl.metrics.inception import FeatureNet, InceptionFeatureNet
from dreamctl.metrics.registry import INCEPTION_METRICS

if TYPE_CHECKING:  # for the annotation only: importing this module (and image_sets) needs no torch
    import torch

__all__ = ["MetricInputs", "load_feature_net", "metric_inputs"]


@dataclass(frozen=True)
class MetricInputs:
    """What `metrics` are computed with, or why one cannot be; made by metric_inputs, which loads a network for
    every metric it calls ready."""

    metrics: tuple[str, ...]  # what it was resolved for: a metric outside it has no decision to read
    missing: dict[str, str] = field(default_factory=dict)  # metric -> the one reason it cannot be computed
    # The network for fid, kid and is, once one of them is ready; else the stand-in the caller gave (its id names it
    # even with no feature metric), or None.
    feature_net: FeatureNet | None = None
    lpips: torch.nn.Module | None = None  # lpips.LPIPS, when lpips is ready
    weights_dir: Path | None = None  # where the loaded weight files are (their digests go into the protocol)
    device: str = "cpu"  # where the networks run; also part of the reference cache's key

    def ready(self, metric: str) -> bool:
        if metric not in self.metrics:
            raise ValueError(f"metric {metric!r} was not among those these inputs were prepared for "
                             f"({', '.join(self.metrics)})")
        return metric not in self.missing


def load_feature_net(feature_net: FeatureNet | None, weights_dir: Path | None,
                     device: str) -> tuple[FeatureNet | None, str | None]:
    """(the network for FID, KID and IS, None) or (None, why it cannot be had): `feature_net` when given,
    else clean-fid's Inception from the weights folder (missing, corrupt or not Inception: the reason)."""
    if feature_net is not None:
        return feature_net, None
    try:
        return InceptionFeatureNet(weights_dir, device), None
    except WeightsError as err:
        return None, str(err)


def _file_problems(metric: str, weights_dir: Path | None) -> str | None:
    """Every weight file of `metric` that is missing or corrupt, in one line; None when all are intact."""
    errors = weights.check_weights([metric], weights_dir)
    return "; ".join(str(e) for e in errors) if errors else None


def _load_lpips(weights_dir: Path | None, device: str) -> tuple[torch.nn.Module | None, str | None]:
    # Imported here: lpips pulls in torchvision, which costs seconds when LPIPS is not asked for.
    from dreamctl.metrics.lpips_diversity import build_lpips

    try:
        return build_lpips(weights_dir, device), None
    except WeightsError as err:  # files intact, but not what this lpips loads (another lpips version)
        return None, str(err)


def metric_inputs(metrics: Sequence[str], *, feature_net: FeatureNet | None = None,
                  weights_dir: Path | None = None, device: str = "cpu") -> MetricInputs:
    """Load what `metrics` need (`feature_net` None: Inception from `weights_dir`), on `device`.

    Each metric whose weights are missing, corrupt or do not load gets one reason: fid, kid and is share
    Inception's; lpips names every one of its files at fault at once, so one download fixes them all."""
    wanted = tuple(dict.fromkeys(metrics))
    # File checks first, then Inception: the order evaluate's refusal has always named them in.
    missing = {m: why for m in wanted if m not in INCEPTION_METRICS and (why := _file_problems(m, weights_dir))}
    net = feature_net
    if features := [m for m in wanted if m in INCEPTION_METRICS]:
        net, why = load_feature_net(feature_net, weights_dir, device)
        missing.update({m: why for m in features if why is not None})
    lpips = None
    if "lpips" in wanted and "lpips" not in missing:
        lpips, why = _load_lpips(weights_dir, device)
        if why is not None:
            missing["lpips"] = why
    return MetricInputs(wanted, missing, net, lpips, weights_dir, device)
