"""What dreamctl knows of each metric, apart from how it is computed (metrics/image_sets.py): its name, the
weight files it needs, what its "std" is over, what evaluate's table says it measures, and what compare must
tell a reader of its column. Adding a metric starts here; its numbers come from image_sets.

Free of numpy and torch: the recipe schema, `--help` and compare read it. Which weight files a metric needs
is said once, by each file (metrics/weights.py, WeightFile.used_by, which its error messages print).
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamctl.metrics.weights import INCEPTION, REGISTRY


@dataclass(frozen=True)
class MetricInfo:
    name: str
    describe: str  # evaluate's "what it measures"; {placeholders} are filled from the protocol's entry of its name
    spread: str | None = None  # what the "std" of its entries is over (metrics/spread.py)
    scale_note: str | None = None  # what a reader of its column must know that its name does not say

    @property
    def weights(self) -> tuple[str, ...]:
        """The weight files it needs, in the order `dreamctl weights` lists them."""
        return tuple(name for name, f in REGISTRY.items() if self.name in f.used_by)


METRICS: dict[str, MetricInfo] = {m.name: m for m in (  # in the order tables and files show them
    MetricInfo("fid", "FID: Fréchet distance of Inception pool features (clean-fid 'clean' resize to 299); "
                      "lower is better"),
    MetricInfo("kid", "KID: unbiased MMD of Inception features, cubic kernel, {num_subsets} subsets; lower is better",
               spread="subsets", scale_note="kid is the raw MMD² of clean-fid (papers often print it ×10³)"),
    MetricInfo("is", "IS: Inception Score, {splits} splits, logits without the output bias; higher is better",
               spread="splits"),
    MetricInfo("lpips", "LPIPS diversity (AlexNet): mean distance over random pairs of generated images, beside "
                        "real ones",
               spread="pairs",  # the spread of the single distances, far wider than the uncertainty of their mean
               scale_note="lpips is the diversity of the generated images (mean LPIPS over random pairs of them; "
                          "higher is more varied, not closer to the data)"),
    MetricInfo("swd", "SWD x1e3 on Laplacian-pyramid {patch}x{patch} patches: weight-free, colour-sensitive; "
                      "lower is better"),
    MetricInfo("pixel_fd", "pixel FD: Fréchet distance on 8x8 downsampled pixels, weight-free proxy, not FID; "
                           "lower is better"),
)}
METRIC_NAMES = tuple(METRICS)
# One feature pass serves them, and the protocol names its network (feature_network_sha256) for all three.
INCEPTION_METRICS = tuple(m.name for m in METRICS.values() if INCEPTION in m.weights)  # fid, kid, is
