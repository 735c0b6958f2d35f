"""Compute a set of metrics between generated and reference images, with its protocol.

Each metric comes back as {"value": float, ...} or {"missing": reason}; a metric whose weights
are absent is reported missing, never as a number. Reference statistics for the feature
network (mean, covariance, features for KID, logits for the real-image IS) are cached as npz,
keyed by the caller's name for the reference (RefCache.key), the images' hash, the network's name and weights
hash, the image count and the device type.
A spread ("std") names what it is over in "spread" (metrics/spread.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dreamctl.atomic import atomic_path
from dreamctl.errors import ConfigError, DataError, DreamctlWarning, MetricUndefined
from dreamctl.metrics import weights
from dreamctl.metrics.inception import (
    INCEPTION_NAME,
    INCEPTION_POOL_DIM,
    RESIZE_CLEAN,
    FeatureNet,
    InceptionFeatureNet,
    batched_features,
    check_images,
)
from dreamctl.metrics.inputs import MetricInputs, metric_inputs
from dreamctl.metrics.pixel_fd import PIXEL_FEATURES, pixel_frechet_distance
from dreamctl.metrics.registry import INCEPTION_METRICS, METRIC_NAMES, METRICS
from dreamctl.metrics.stats import (
    frechet_distance,
    gaussian_stats,
    inception_score,
    kernel_inception_distance,
    kid_subset_size,
    softmax,
)
from dreamctl.metrics.swd import PATCH_SIZE, sliced_wasserstein_distance, swd_settings
from dreamctl.protocol import FeatureNetworkId

__all__ = ["RefCache", "evaluate_image_sets", "feature_network_fields", "reference_stats"]

KID_SUBSETS, KID_SUBSET_SIZE, IS_SPLITS, LPIPS_PAIRS = 100, 1000, 10, 1000
# Below Inception's feature dimension the generated set's covariance is rank-deficient and FID is biased far
# upward; published FIDs use 50,000 images.
FID_MIN_IMAGES, FID_PUBLISHED_IMAGES = INCEPTION_POOL_DIM, 50_000


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries behind the numbers; None for one not installed (the weight-free
    metrics need neither clean-fid nor lpips)."""
    return {pkg: _version(pkg) for pkg in ("torch", "clean-fid", "lpips", "scipy", "numpy", "pillow")}  # PIL resizes


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def feature_network_fields(net: FeatureNet | None) -> dict[str, Any]:
    """The protocol fields naming the feature network (protocol.FeatureNetworkId). `net` None: no network was loaded
    (no FID, KID or IS computed): Inception by name, with no hash."""
    stand_in = net is not None and not isinstance(net, InceptionFeatureNet)
    return FeatureNetworkId(net.name if stand_in else INCEPTION_NAME, None if net is None else net.weights_sha256,
                            stand_in, RESIZE_CLEAN if net is None else net.resize).to_json()


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"refstats-{digest}.npz"


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


@dataclass(frozen=True)
class RefCache:
    """Where reference statistics are cached: the caller's name for the reference images, and the folder."""

    key: str  # evaluate's: the data's manifest sha256, split and image count
    folder: Path


def reference_stats(net: FeatureNet, reference: np.ndarray, *, cache: RefCache | None, batch_size: int = 64,
                    device: str = "cpu") -> tuple[dict[str, np.ndarray | None], str]:
    """{"mu", "sigma", "feats", "logits"} of the reference set, from `cache` when it holds them (None: no cache).

    The cache is per device type: the generated images' features come from `device`, and a GPU's
    convolutions (TF32) round differently from a CPU's, so both sets are computed alike, as clean-fid does.
    Returns the stats and what the cache did: "hit", "written" or "off"."""
    # The images themselves (hashed: about 1 s at 50,000 of 64 px), not only the caller's name for them. Library
    # versions are not in it: an upgrade moves features by float rounding only, and would orphan ~400 MB each time.
    key = {"reference_key": None if cache is None else cache.key,
           "images_sha256": hashlib.sha256(np.ascontiguousarray(reference)).hexdigest(),
           "net": net.name, "weights_sha256": net.weights_sha256, "resize": net.resize, "count": int(len(reference)),
           "device_type": str(device).split(":")[0]}
    path = None if cache is None else _cache_path(cache.folder, key)
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    logits = z["logits"] if "logits" in z.files else None
                    return {"mu": z["mu"], "sigma": z["sigma"], "feats": z["feats"], "logits": logits}, "hit"
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as err:  # recomputed and replaced below
            warnings.warn(f"reference statistics cache {path} is unreadable ({type(err).__name__}); computing "
                          "them again and replacing it", DreamctlWarning, stacklevel=2)
    feats, logits = batched_features(net, reference, batch_size)
    mu, sigma = gaussian_stats(feats)
    stats = {"mu": mu, "sigma": sigma, "feats": feats, "logits": logits}
    if path is None:
        return stats, "off"
    extra = {} if logits is None else {"logits": logits}
    try:
        _save_npz_atomic(path, key=np.array(json.dumps(key, sort_keys=True)), mu=mu, sigma=sigma, feats=feats, **extra)
    except OSError as err:  # a read-only data folder: the statistics are right, only not kept for next time
        warnings.warn(f"reference statistics not cached in {path.parent} ({err.strerror or err}); "
                      "they are computed again next time", DreamctlWarning, stacklevel=2)
        return stats, "not written"
    return stats, "written"


def _entry(compute: Callable[[], dict]) -> dict:
    """A metric's entry, or {"missing": why} when its inputs admit none (MetricUndefined): that metric fails alone,
    and the others still count. Any other error stops the evaluation: a wrong shape here is a bug, not a gap."""
    try:
        return compute()
    except MetricUndefined as err:
        return {"missing": str(err)}


def _under(dim: int, generated: np.ndarray, reference: np.ndarray) -> list[str]:
    """`12 generated`, `20 reference`: the sets too small for a full-rank covariance of `dim` features, whose
    Fréchet distance is then biased upward."""
    return [f"{len(x)} {what}" for x, what in ((generated, "generated"), (reference, "reference")) if len(x) < dim]


def _feature_metrics(wanted: set[str], net: FeatureNet, generated: np.ndarray, ref: dict, seed: int,
                     batch_size: int, stand_in: bool) -> dict[str, dict]:
    feats, logits = batched_features(net, generated, batch_size)
    note = {"note": f"computed with {net.name}; not comparable to Inception metrics"} if stand_in else {}
    out: dict[str, dict] = {}
    if "fid" in wanted:
        if small := _under(FID_MIN_IMAGES, generated, ref["feats"]):
            warnings.warn(f"FID from {' and '.join(small)} images (under {FID_MIN_IMAGES:,}) is biased upward "
                          f"and not comparable with published FIDs, which use {FID_PUBLISHED_IMAGES:,}; compare it "
                          "only within its protocol", DreamctlWarning, stacklevel=3)
        mu, sigma = gaussian_stats(feats)
        out["fid"] = _entry(lambda: {"value": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), **note})
    if "kid" in wanted:
        mean, std = kernel_inception_distance(feats, ref["feats"], num_subsets=KID_SUBSETS,
                                              max_subset_size=KID_SUBSET_SIZE, rng=np.random.default_rng(seed))
        m = kid_subset_size(len(feats), len(ref["feats"]), KID_SUBSET_SIZE)
        # std None: one subset, both sets whole
        spread = {} if std is None else {"std": std, "spread": METRICS["kid"].spread}
        out["kid"] = {"value": mean, **spread, "subset_size": m, **note}
    if "is" in wanted:
        if logits is None:
            out["is"] = {"missing": f"feature network {net.name} gives no class logits"}
        elif len(generated) < IS_SPLITS:
            out["is"] = {"missing": f"IS needs at least {IS_SPLITS} generated images, got {len(generated)}"}
        else:
            mean, std = inception_score(softmax(logits), IS_SPLITS)
            entry = {"value": mean, "std": std, "spread": METRICS["is"].spread, **note}
            if ref["logits"] is not None and len(ref["logits"]) >= IS_SPLITS:
                entry["real_value"], entry["real_std"] = inception_score(softmax(ref["logits"]), IS_SPLITS)
            out["is"] = entry
    return out


@dataclass(frozen=True)
class ImageSets:
    """What a metric is computed from, beside the feature pass that fid, kid and is share."""

    generated: np.ndarray
    reference: np.ndarray
    inputs: MetricInputs
    seed: int
    batch_size: int


class Scored(NamedTuple):
    entry: dict  # the metric's value (or why it is missing)
    settings: dict  # what protocol[name] records of how it was computed, once it was
    weights: dict  # {weight file: sha256} of the files it loaded


def _lpips(s: ImageSets) -> Scored:
    # Imported here: lpips pulls in torchvision, which costs seconds when LPIPS is not asked for.
    from dreamctl.metrics.lpips_diversity import lpips_diversity

    def lpips() -> dict:  # images under AlexNet's size: MetricUndefined, as SWD's
        diversity = partial(lpips_diversity, s.inputs.lpips, num_pairs=LPIPS_PAIRS, seed=s.seed,
                            batch_size=s.batch_size)
        (value, std), (real, real_std) = diversity(s.generated), diversity(s.reference)
        return {"value": value, "std": std, "spread": METRICS["lpips"].spread, "real_value": real,
                "real_std": real_std, "pairs": LPIPS_PAIRS}
    entry = _entry(lpips)
    if "missing" in entry:
        return Scored(entry, {}, {})
    used = {name: weights.sha256_file(weights.path_of(name, s.inputs.weights_dir)) for name in METRICS["lpips"].weights}
    return Scored(entry, {"net": "alex", "version": "0.1", "pairs": LPIPS_PAIRS}, used)


def _swd(s: ImageSets) -> Scored:
    def swd() -> dict:
        levels = sliced_wasserstein_distance(s.generated, s.reference, seed=s.seed)
        return {"value": levels["average"], "levels": {str(k): v for k, v in levels["levels"].items()},
                "note": f"sliced Wasserstein distance x1e3 on {PATCH_SIZE}x{PATCH_SIZE} Laplacian-pyramid patches"}
    entry = _entry(swd)
    return Scored(entry, swd_settings() if "value" in entry else {}, {})


def _pixel_fd(s: ImageSets) -> Scored:
    if small := _under(PIXEL_FEATURES, s.generated, s.reference):
        warnings.warn(f"pixel FD from {' and '.join(small)} images (under its {PIXEL_FEATURES} features) rests on "
                      "a rank-deficient covariance and is biased upward; compare it only within its protocol",
                      DreamctlWarning, stacklevel=3)  # evaluate_image_sets's caller
    entry = _entry(lambda: {"value": pixel_frechet_distance(s.generated, s.reference),
                            "note": "Fréchet distance on 8x8 area-downsampled pixels in [0, 1]; weight-free proxy"})
    return Scored(entry, {}, {})


# The metrics computed each on its own, in the order they run; fid, kid and is share one feature pass instead.
ONE_BY_ONE: dict[str, Callable[[ImageSets], Scored]] = {"lpips": _lpips, "swd": _swd, "pixel_fd": _pixel_fd}


def evaluate_image_sets(generated: np.ndarray, reference: np.ndarray, metrics: Sequence[str], *,
                        inputs: MetricInputs | None = None, cache: RefCache | None = None, seed: int = 0,
                        batch_size: int = 64) -> dict:
    """{"metrics": {name: {"value": ...} | {"missing": reason}}, "protocol": {...}}.

    `inputs` (metric_inputs) says what each metric is computed with, or why it cannot be; None: metric_inputs of
    `metrics`, Inception and LPIPS from the default weights folder, on the CPU. `cache` None: reference statistics
    are computed and not kept."""
    check_images(generated, "generated images")
    check_images(reference, "reference images")
    if generated.shape[1:] != reference.shape[1:]:
        raise DataError(f"generated images {generated.shape[1:]} and reference images {reference.shape[1:]} "
                        "differ in size; evaluate at the data's resolution")
    if len(generated) < 2 or len(reference) < 2:
        raise DataError(f"need at least 2 generated and 2 reference images, got {len(generated)} and {len(reference)}")
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)} in metrics; choose from {', '.join(METRIC_NAMES)}")
    wanted = list(dict.fromkeys(metrics))
    inputs = metric_inputs(wanted) if inputs is None else inputs
    results = {m: {"missing": inputs.missing[m]} for m in wanted if not inputs.ready(m)}
    protocol: dict = {"num_generated": int(len(generated)), "num_reference": int(len(reference)),
                      "image_size": list(generated.shape[1:3]), "seed": seed,
                      "libraries": library_versions(), "weights": {}}

    net = inputs.feature_net
    if feature_ready := [m for m in wanted if m in INCEPTION_METRICS and inputs.ready(m)]:
        stand_in = not isinstance(net, InceptionFeatureNet)
        ref, protocol["reference_cache"] = reference_stats(net, reference, cache=cache, batch_size=batch_size,
                                                           device=inputs.device)
        results.update(_feature_metrics(set(feature_ready), net, generated, ref, seed, batch_size, stand_in))
        protocol["kid"] = {"num_subsets": KID_SUBSETS, "max_subset_size": KID_SUBSET_SIZE}
        protocol["is"] = {"splits": IS_SPLITS, "logits": "pool features x output weight, no bias"}
        if not stand_in:
            protocol["weights"][weights.INCEPTION] = net.weights_sha256
    protocol.update(feature_network_fields(net))  # a stand-in is named even without a feature metric: its id says so

    sets = ImageSets(generated, reference, inputs, seed, batch_size)
    for name, score in ONE_BY_ONE.items():
        if name in wanted and inputs.ready(name):
            results[name], settings, used = score(sets)
            protocol["weights"].update(used)
            if settings:
                protocol[name] = settings
    return {"metrics": {m: results[m] for m in wanted}, "protocol": protocol}
