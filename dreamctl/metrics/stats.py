"""The statistics behind FID, KID and IS, as pure NumPy functions.

Written here rather than called from clean-fid because its `frechet_distance` passes
`disp=False` to `scipy.linalg.sqrtm` (deprecated in SciPy 1.16, gone in 1.18) and its
`kernel_distance` draws subsets from the global NumPy RNG. The maths is the same.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.special import xlogy

from dreamctl.errors import DataError, MetricUndefined


def _as_2d(features: np.ndarray) -> np.ndarray:
    """(N,) is N one-dimensional features; (N, D) is N features of dimension D."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim == 1:
        feats = feats[:, None]
    if feats.ndim != 2:
        raise DataError(f"features must have shape (N,) or (N, D), got {feats.shape}")
    return feats


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features; needs at least two rows."""
    feats = _as_2d(features)
    if feats.shape[0] < 2:
        raise DataError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Heusel et al. 2017).

    Like pytorch-fid: if the product is too singular for a finite square root, eps is added
    to both diagonals; a small imaginary part from rounding is dropped, a large one is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise DataError(f"Gaussian statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                        f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricUndefined(f"Fréchet distance: the covariance product's square root has an imaginary part "
                            f"of {np.max(np.abs(covmean.imag)):.3g}; use more images than feature dimensions")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kid_subset_size(n1: int, n2: int, max_subset_size: int) -> int:
    """The size of KID's random subsets: every image of the smaller set, up to `max_subset_size`."""
    return min(n1, n2, max_subset_size)


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, *, num_subsets: int = 100,
                              max_subset_size: int = 1000, rng: np.random.Generator | None = None,
                              ) -> tuple[float, float | None]:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets
    (Binkowski et al. 2018; clean-fid's `kernel_distance`). Returns (mean, std over subsets).

    When a subset is the whole of both sets, every draw is the same subset: the value is computed
    once and the std is None, as there is no spread to report (clean-fid's would be rounding noise)."""
    x_all, y_all = _as_2d(feats1), _as_2d(feats2)
    if x_all.shape[1] != y_all.shape[1]:
        raise DataError(f"KID: feature dimensions differ ({x_all.shape[1]} vs {y_all.shape[1]})")
    rng = rng if rng is not None else np.random.default_rng(0)
    d = x_all.shape[1]
    m = kid_subset_size(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise DataError(f"KID needs at least 2 images in each set, got {x_all.shape[0]} and {y_all.shape[0]}")

    def mmd2(x: np.ndarray, y: np.ndarray) -> float:
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        return ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m

    if m == x_all.shape[0] == y_all.shape[0]:
        return float(mmd2(y_all, x_all)), None
    values = np.empty(num_subsets)
    for i in range(num_subsets):  # x from the second set, drawn first: clean-fid's order, so one rng draws its subsets
        values[i] = mmd2(y_all[rng.choice(y_all.shape[0], m, replace=False)],
                         x_all[rng.choice(x_all.shape[0], m, replace=False)])
    return float(values.mean()), float(values.std())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) over `num_splits` consecutive splits (Salimans et al. 2016,
    as StyleGAN2-ADA's metrics/inception_score.py). Returns (mean, std) over splits.

    0 * log 0 counts as 0, so one-hot predictions are allowed."""
    p = np.asarray(probs, np.float64)
    n = p.shape[0]
    if p.ndim != 2 or n < num_splits:
        raise DataError(f"IS needs class probabilities (N, K) with N >= {num_splits}, got {p.shape}")
    scores = []
    for i in range(num_splits):
        part = p[i * n // num_splits:(i + 1) * n // num_splits]
        py = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
