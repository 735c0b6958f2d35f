"""The metric formulas pinned by hand-made inputs whose answers are known without the code:
the conventions FID, KID, IS, SWD and LPIPS diversity share with their reference implementations
(clean-fid, StyleGAN2-ADA / torch-fidelity, ProGAN, lpips)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from dreamctl.errors import DataError
from dreamctl.metrics import swd
from dreamctl.metrics.lpips_diversity import lpips_diversity, random_pairs
from dreamctl.metrics.stats import frechet_distance, gaussian_stats, inception_score, kernel_inception_distance

# --- Fréchet distance ---------------------------------------------------------------------


def test_gaussian_stats_covariance_is_the_unbiased_one():
    """clean-fid (whose FIDs the study quotes) takes np.cov(rowvar=False), dividing by N - 1;
    dividing by N would shrink every covariance and so change every FID at small N."""
    mu, sigma = gaussian_stats(np.array([0.0, 2.0]))
    np.testing.assert_allclose(mu, [1.0], rtol=1e-15)
    np.testing.assert_allclose(sigma, [[2.0]], rtol=1e-15)  # (1 + 1) / (2 - 1)
    feats = np.array([[1.0, 1.0], [-1.0, -1.0], [2.0, -2.0], [-2.0, 2.0]])  # mean 0
    # sum of x x^T = [[10, -6], [-6, 10]], over N - 1 = 3
    mu, sigma = gaussian_stats(feats)
    np.testing.assert_allclose(mu, [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(sigma, [[10 / 3, -2.0], [-2.0, 10 / 3]], rtol=1e-12)


def test_fid_from_features_matches_clean_fid_at_small_n():
    """Features to FID end to end equals clean-fid's fid_from_feats; with 6 samples the N vs N - 1
    covariance convention moves the answer by a sixth, so any drift from clean-fid shows."""
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(20)
    a = rng.standard_normal((6, 3))
    b = rng.standard_normal((6, 3)) @ np.diag([2.0, 0.5, 1.0]) + 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=False)
        ref = fid_from_feats(a, b)
    assert frechet_distance(*gaussian_stats(a), *gaussian_stats(b)) == pytest.approx(ref, rel=1e-8)


def test_frechet_large_imaginary_square_root_is_data_error_rounding_one_is_dropped():
    """Two true covariances have a product with a real square root; a large imaginary part means the
    statistics are not a covariance pair (a negative eigenvalue), and publishing the real part would
    report a meaningless FID. An imaginary part of rounding size (here 1e-5) is only noise."""
    # sqrtm([[-4]]) = [[2j]]: an imaginary part of 2 on the diagonal.
    with pytest.raises(DataError, match="imaginary"):
        frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), -4.0 * np.eye(1))
    with pytest.raises(DataError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-0.25, 1.0]))  # 0.5j
    # sqrtm(diag(-1e-10, 1)) = diag(1e-5 j, 1): dropped; d^2 = (1 - 1e-10) + (1 + 1 - 2) = 1.
    d = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1e-10, 1.0]))
    assert d == pytest.approx(1.0, abs=1e-9)


# --- KID ----------------------------------------------------------------------------------


class _ScriptedSubsets:
    """Stands in for the rng: `choice(n, m, replace=False)` returns the next scripted subset of
    range(n). The two sets have different sizes, so the draw order between them does not matter."""

    def __init__(self, subsets: dict[int, list[list[int]]]):
        self._queues = {n: iter(s) for n, s in subsets.items()}

    def choice(self, n, m, replace=True):
        assert not replace
        subset = np.array(next(self._queues[n]))
        assert len(subset) == m
        return subset


def _mmd2_unbiased(x, y):
    """Binkowski et al. 2018, eq. for the unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, as sums."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(k(x[i], y[j]) for i, j in itertools.product(range(m), range(m)))
    return (xx + yy) / (m * (m - 1)) - 2.0 * xy / (m * m)


def test_kid_mean_and_population_std_over_subsets():
    """KID is the mean of the per-subset unbiased MMD^2 and its spread the population std (ddof=0),
    as torch-fidelity and Binkowski's MMD-GAN code report it (np.std(mmds)); ddof=1 would give a
    different error bar (x sqrt(2) with two subsets) than those tools for the same subsets."""
    feats1 = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [-1.0, 0.5]])
    feats2 = np.array([[0.5, 0.5], [3.0, -1.0], [0.0, 2.0], [1.0, 1.0], [-2.0, 0.0]])
    subsets1, subsets2 = [[0, 1, 2], [1, 2, 3]], [[0, 1, 2], [2, 3, 4]]
    values = [_mmd2_unbiased(feats1[s1], feats2[s2]) for s1, s2 in zip(subsets1, subsets2)]
    assert abs(values[0] - values[1]) > 0.1  # the subsets disagree, so the std convention matters
    rng = _ScriptedSubsets({4: subsets1, 5: subsets2})
    mean, std = kernel_inception_distance(feats1, feats2, num_subsets=2, max_subset_size=3, rng=rng)
    assert mean == pytest.approx((values[0] + values[1]) / 2, rel=1e-12)
    assert std == pytest.approx(abs(values[0] - values[1]) / 2, rel=1e-12)  # population std of two


# --- IS -------------------------------------------------------------------------------------


def test_inception_score_marginal_is_taken_per_split():
    """p(y) is each split's own marginal (Salimans et al.; StyleGAN2-ADA): ten splits that each
    predict one class with certainty score 1 each, however different the classes of the splits;
    a marginal over the whole set would call them ten-class diverse and score 10."""
    probs = np.repeat(np.eye(10), 3, axis=0)  # split k (3 images) is all one-hot on class k
    mean, std = inception_score(probs, num_splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_is_mean_of_split_scores_with_population_std():
    """IS averages exp(KL) over splits (not exp of the mean KL), and its std is the population std
    over splits (np.std, as StyleGAN2-ADA and the original improved-gan code): splits scoring
    exactly 1 and 2 give 1.5 +- 0.5."""
    e0, e1 = np.eye(2)
    probs = np.stack([e0, e0, e0, e0,    # one class only: exp(0) = 1
                      e0, e1, e0, e1])   # two classes equally: exp(log 2) = 2
    mean, std = inception_score(probs, num_splits=2)
    assert mean == pytest.approx(1.5, rel=1e-12)
    assert std == pytest.approx(0.5, rel=1e-12)


# --- SWD ------------------------------------------------------------------------------------


def test_swd_descriptors_normalised_per_channel():
    """ProGAN normalises patch descriptors per colour channel (mean and std over axis (0, 2, 3)):
    a channel with a thousand times the spread of another must not drown it out."""
    rng = np.random.default_rng(21)
    scale, offset = np.array([1.0, 10.0, 1000.0]), np.array([5.0, -50.0, 2000.0])
    desc = (rng.standard_normal((400, 3, 3, 3)) * scale[None, :, None, None]
            + offset[None, :, None, None]).astype(np.float32)
    out = swd.normalize_descriptors(desc.copy())
    assert out.shape == (400, 27) and out.dtype == np.float32
    per_channel = out.reshape(400, 3, 3, 3).astype(np.float64)
    np.testing.assert_allclose(per_channel.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)


def test_sliced_wasserstein_of_a_shift_along_one_axis_is_the_shift():
    """With one-dimensional descriptors every unit direction is +-1, so the sliced W1 between a set
    and a shuffled copy moved by 3 is exactly 3; directions of any other length would scale it."""
    rng = np.random.default_rng(22)
    a = rng.standard_normal((200, 1)).astype(np.float32)
    b = (a + 3.0)[rng.permutation(200)]
    d = swd.sliced_wasserstein(a, b, dirs_per_repeat=16, dir_repeats=2, rng=np.random.default_rng(0))
    assert d == pytest.approx(3.0, rel=1e-6)
    assert swd.sliced_wasserstein(a, a[::-1].copy(), 16, 2, np.random.default_rng(0)) == pytest.approx(0.0, abs=1e-7)


def test_swd_reports_raw_distance_times_1e3(monkeypatch):
    """Reported SWD is ProGAN's SWDx1e3: each level's raw sliced W1 times 1000, and their mean;
    the weight-free scale in REFERENCES.md (5-9 real vs real, 94 noise) is on that scale."""
    raw = iter([0.004, 0.010])  # the raw distances of the 32 px and 16 px levels, in that order
    monkeypatch.setattr(swd, "sliced_wasserstein", lambda a, b, dirs, repeats, rng: next(raw))
    imgs = np.random.default_rng(23).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = swd.sliced_wasserstein_distance(imgs, imgs[::-1].copy(), patches_per_image=4)
    assert out["levels"] == {32: pytest.approx(4.0), 16: pytest.approx(10.0)}
    assert out["average"] == pytest.approx(7.0)


# --- LPIPS diversity ------------------------------------------------------------------------


def test_random_pairs_never_pair_an_image_with_itself():
    """LPIPS(x, x) = 0: a pair of an image with itself would pull the diversity toward zero.
    Pairs are uniform over the ordered pairs i != j."""
    pairs = random_pairs(2, 200, np.random.default_rng(0))
    assert pairs.shape == (200, 2) and {tuple(sorted(p)) for p in pairs.tolist()} == {(0, 1)}
    pairs = random_pairs(7, 2000, np.random.default_rng(1))
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert {tuple(p) for p in pairs.tolist()} == set(itertools.permutations(range(7), 2))


class _RecordingDistance(torch.nn.Module):
    """Stands in for lpips.LPIPS: records its inputs and returns the mean absolute difference."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # lpips_diversity reads the device from it
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, a, b):
        self.inputs.append((a.clone(), b.clone()))
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_diversity_feeds_minus_one_to_one_and_distinct_pairs():
    """lpips expects images in [-1, 1]: uint8 0 must reach the network as -1 and 255 as +1 (its
    calibrated linear layers assume that range), and each pair must hold two different images."""
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    imgs[1] = 255
    model = _RecordingDistance()
    mean, std = lpips_diversity(model, imgs, num_pairs=20, batch_size=8)
    seen = torch.cat([torch.stack([a, b], dim=1) for a, b in model.inputs])  # (pairs, 2, 3, 32, 32)
    assert seen.shape == (20, 2, 3, 32, 32) and seen.dtype == torch.float32
    firsts = seen[:, :, 0, 0, 0]
    assert torch.equal(seen, firsts[:, :, None, None, None].expand_as(seen))  # constant images stay constant
    assert set(firsts.flatten().tolist()) == {-1.0, 1.0}
    assert torch.equal(firsts.sum(dim=1), torch.zeros(20))  # every pair: one black, one white
    assert mean == pytest.approx(2.0) and std == pytest.approx(0.0, abs=1e-12)
