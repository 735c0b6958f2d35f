"""The metric maths against closed forms: Fréchet distance, KID, IS, SWD, 8x8 pixel FD."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dreamctl.errors import DataError
from dreamctl.metrics.pixel_fd import area_downsample, pixel_frechet_distance
from dreamctl.metrics.stats import frechet_distance, gaussian_stats, inception_score, kernel_inception_distance, softmax
from dreamctl.metrics.swd import laplacian_pyramid, sliced_wasserstein_distance


def _psd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- Fréchet distance ---------------------------------------------------------------------

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_commuting_covariances_closed_form():
    # Same eigenvectors, different eigenvalues: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(l1) - sqrt(l2))^2.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    l1, l2 = rng.uniform(0.2, 4, 6), rng.uniform(0.2, 4, 6)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu = rng.standard_normal(6)
    expected = np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_identical_symmetric_and_translation():
    rng = np.random.default_rng(2)
    feats_a = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8))
    feats_b = rng.standard_normal((400, 8)) * 2 + 1
    mu_a, s_a = gaussian_stats(feats_a)
    mu_b, s_b = gaussian_stats(feats_b)
    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-6
    d_ab, d_ba = frechet_distance(mu_a, s_a, mu_b, s_b), frechet_distance(mu_b, s_b, mu_a, s_a)
    assert d_ab > 1.0 and d_ab == pytest.approx(d_ba, rel=1e-6)
    c = rng.standard_normal(8)
    mu_t, s_t = gaussian_stats(feats_a + c)
    assert frechet_distance(mu_a, s_a, mu_t, s_t) == pytest.approx(c @ c, rel=1e-6)


def test_frechet_one_dimensional_features():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 2000), rng.normal(3, 2, 2000)
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    assert s_a.shape == (1, 1)
    expected = (mu_a[0] - mu_b[0]) ** 2 + (np.sqrt(s_a[0, 0]) - np.sqrt(s_b[0, 0])) ** 2
    assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(0.0, 1.0, 2.0, 4.0) == pytest.approx(4.0 + 1.0)  # scalars too


def test_frechet_singular_covariances_and_no_deprecated_disp():
    # Fewer samples than dimensions: singular covariances, as with small sample counts.
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((10, 30)), rng.standard_normal((10, 30)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # sqrtm(disp=...) would raise here
        d = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert np.isfinite(d) and d > 0


def test_frechet_matches_clean_fid():
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    rng = np.random.default_rng(5)
    s1, s2 = _psd(rng, 7), _psd(rng, 7)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = cleanfid_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_shape_mismatch_is_data_error():
    with pytest.raises(DataError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID ----------------------------------------------------------------------------------

def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    c = rng.standard_normal((300, 16)) * 1.5 + 0.7
    same, _ = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=200, rng=np.random.default_rng(0))
    diff, _ = kernel_inception_distance(a, c, num_subsets=20, max_subset_size=200, rng=np.random.default_rng(0))
    assert abs(same) < 0.02
    assert diff > 0.5 and diff > 20 * abs(same)


def test_kid_seeded_and_equal_to_clean_fid_with_full_subsets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4)) + 0.3
    # With subsets of every image the unbiased MMD does not depend on the draw.
    ours, std = kernel_inception_distance(a, b, num_subsets=3, max_subset_size=1000)
    assert ours == pytest.approx(kernel_distance(a, b, num_subsets=3), rel=1e-9)
    assert std is None  # one subset, the whole of both sets: no spread to report
    # Subsets of 49 of a's 50: both average 100 random draws (clean-fid's from np.random, seeded here so the
    # test cannot fail by chance), and agree to about 1% (over 20 seeds each: 0.503-0.512).
    np.random.seed(0)
    by_draws, draws_std = kernel_inception_distance(a, b[:49], num_subsets=100, max_subset_size=1000,
                                                    rng=np.random.default_rng(0))
    assert by_draws == pytest.approx(kernel_distance(a, b[:49], num_subsets=100), rel=0.03) and draws_std > 0
    r1 = kernel_inception_distance(a, b, num_subsets=5, max_subset_size=20, rng=np.random.default_rng(1))
    r2 = kernel_inception_distance(a, b, num_subsets=5, max_subset_size=20, rng=np.random.default_rng(1))
    assert r1 == r2


# --- IS -------------------------------------------------------------------------------------

def test_inception_score_constant_prediction_is_one():
    p = np.tile(softmax(np.random.default_rng(8).standard_normal((1, 7))), (100, 1))
    mean, std = inception_score(p, 10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_inception_score_equal_one_hot_classes_is_n(n):
    labels = np.arange(20 * n) % n  # each of the 10 splits uses every class equally often
    mean, std = inception_score(np.eye(n)[labels], 10)
    assert mean == pytest.approx(n, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_needs_enough_images():
    with pytest.raises(DataError):
        inception_score(np.full((5, 3), 1 / 3), 10)


# --- SWD and pixel FD ------------------------------------------------------------------------

def _blobs(rng, n, size=32):
    """Smooth coloured images: a few Gaussian blobs on a flat background."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = np.empty((n, size, size, 3), np.float64)
    for k in range(n):
        img = np.ones((size, size, 3)) * rng.uniform(0.2, 0.5, 3)
        for _ in range(3):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)[..., None] * rng.uniform(0, 0.5, 3)
        imgs[k] = img
    return (np.clip(imgs, 0, 1) * 255).astype(np.uint8)


def test_laplacian_pyramid_reconstructs():
    from dreamctl.metrics.swd import pyr_up

    x = np.random.default_rng(9).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    pyr = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyr] == [32, 16, 8]
    recon = pyr[-1]
    for level in reversed(pyr[:-1]):
        recon = pyr_up(recon) + level
    np.testing.assert_allclose(recon, x, atol=1e-3)


def test_swd_small_for_same_images_large_for_noise():
    rng = np.random.default_rng(10)
    a, b = _blobs(rng, 64), _blobs(rng, 64)
    noise = rng.integers(0, 256, a.shape, dtype=np.uint8)
    kw = dict(patches_per_image=32, dirs_per_repeat=32)
    same = sliced_wasserstein_distance(a, b, seed=0, **kw)
    far = sliced_wasserstein_distance(a, noise, seed=0, **kw)
    assert set(same["levels"]) == {32, 16}
    assert same["average"] == pytest.approx(np.mean(list(same["levels"].values())))
    assert far["average"] > 3 * same["average"]
    assert sliced_wasserstein_distance(a, b, seed=0, **kw) == same  # seeded


def test_swd_rejects_bad_sizes():
    with pytest.raises(DataError):
        sliced_wasserstein_distance(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DataError):
        sliced_wasserstein_distance(np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 32, 32, 3), np.uint8))


def test_area_downsample_block_mean_and_box_filter_agree():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    blocks = area_downsample(x, 8)
    assert blocks.shape == (3, 192) and blocks.min() >= 0 and blocks.max() <= 1
    np.testing.assert_allclose(blocks[0, :3], x[0, :2, :2].reshape(-1, 3).mean(0) / 255)
    # A 24x24 image made of 3x3 copies of each 8x8 pixel goes through PIL's box filter exactly.
    big = np.repeat(np.repeat(x[:, ::2, ::2], 3, axis=1), 3, axis=2)
    np.testing.assert_allclose(area_downsample(big, 8), x[:, ::2, ::2].reshape(3, -1) / 255, atol=1e-5)


def test_pixel_fd_orders_same_below_noise():
    rng = np.random.default_rng(12)
    a, b = _blobs(rng, 300, 16), _blobs(rng, 300, 16)
    noise = rng.integers(0, 256, a.shape, dtype=np.uint8)
    same, far = pixel_frechet_distance(a, b), pixel_frechet_distance(a, noise)
    assert 0 <= same < 0.5 and far > 5 * same
    assert pixel_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
