"""The metric-set orchestration with an injected stand-in feature network, and on the real
Inception code path with a small TorchScript file in a temporary weights folder."""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np
import pytest
import torch

from dreamctl.errors import ConfigError, DataError, DreamctlWarning
from dreamctl.metrics import image_sets, weights
from dreamctl.metrics.image_sets import RefCache, evaluate_image_sets
from dreamctl.metrics.inception import RESIZE_CLEAN
from dreamctl.metrics.inputs import MetricInputs, metric_inputs
from dreamctl.metrics.weights import check_weights
from feature_fakes import StandInFeatureNet, write_fake_inception

# The sets here are tiny on purpose; test_fid_from_fewer_than_2048_images_warns checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:FID from .* images .under 2,048.:dreamctl.errors.DreamctlWarning")


def _faces(seed: int, n: int, size: int = 32) -> np.ndarray:
    """Crude smooth images: a bright ellipse on a coloured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        bg = rng.uniform(0, 0.4, 3)
        cy, cx, ry, rx = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.3)
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)[..., None]
        out[k] = (np.where(mask, rng.uniform(0.6, 1.0, 3), bg) * 255).astype(np.uint8)
    return out


ALL = ["fid", "kid", "is", "lpips", "swd", "pixel_fd"]


def _stand_in(net: StandInFeatureNet | None = None, device: str = "cpu") -> MetricInputs:
    """Inputs for any metric, a stand-in for Inception (LPIPS missing: the test's weights folder is empty)."""
    return metric_inputs(ALL, feature_net=net or StandInFeatureNet(), device=device)


def test_weight_free_metrics_need_neither_clean_fid_nor_lpips_installed(monkeypatch):
    """The GPU machine had neither package: evaluate --metrics swd,pixel_fd ended in a traceback from
    recording the libraries' versions. A missing one is recorded as None; the metrics are computed."""
    installed = importlib.metadata.version

    def version(pkg: str) -> str:
        if pkg in ("clean-fid", "lpips"):
            raise importlib.metadata.PackageNotFoundError(pkg)
        return installed(pkg)

    monkeypatch.setattr(importlib.metadata, "version", version)
    out = evaluate_image_sets(_faces(0, 8), _faces(1, 8), metrics=["swd", "pixel_fd"])
    assert all(np.isfinite(out["metrics"][m]["value"]) for m in ("swd", "pixel_fd"))
    libraries = out["protocol"]["libraries"]
    assert libraries == {**{pkg: installed(pkg) for pkg in libraries}, "clean-fid": None, "lpips": None}

def test_stand_in_pipeline_shapes_protocol_and_cache(tmp_path):
    gen, ref = _faces(0, 24), _faces(1, 24)
    net = StandInFeatureNet()
    kw = dict(metrics=ALL, cache=RefCache("synthetic/train@abc123", tmp_path / "cache"), inputs=_stand_in(net))
    out = evaluate_image_sets(gen, ref, **kw)
    m, proto = out["metrics"], out["protocol"]
    assert list(m) == ALL
    for name in ("fid", "kid", "is", "swd", "pixel_fd"):
        assert np.isfinite(m[name]["value"]), name
    for name in ("fid", "kid", "is"):
        assert "stand-in" in m[name]["note"]
    assert m["fid"]["value"] > 0 and 1.0 <= m["is"]["value"] <= 10 and "real_value" in m["is"]
    assert set(m["swd"]["levels"]) == {"32", "16"}
    # LPIPS has no backbone here: reported missing with the file, never as a number.
    assert set(m["lpips"]) == {"missing"} and weights.ALEXNET in m["lpips"]["missing"]
    assert proto["feature_network_stand_in"] is True and proto["feature_network"] == net.name
    assert proto["resize"] == RESIZE_CLEAN and proto["feature_network_sha256"] == net.weights_sha256
    # The spread says what it is over: KID's 100 subsets, IS's 10 splits (no error bars).
    assert m["is"]["spread"] == "splits" and "spread" not in m["fid"]  # kid: below, with sets larger than a subset
    assert set(proto["libraries"]) == {"torch", "clean-fid", "lpips", "scipy", "numpy", "pillow"}
    assert proto["num_generated"] == 24 and proto["num_reference"] == 24 and proto["image_size"] == [32, 32]
    assert proto["reference_cache"] == "written" and proto["weights"] == {}
    assert net.last_input_shape[1:] == (3, 299, 299)  # the clean resize ran
    assert net.calls == 48

    again = evaluate_image_sets(gen, ref, **kw)
    assert net.calls == 72  # only the generated images went through the network
    assert again["protocol"]["reference_cache"] == "hit"
    assert again["metrics"]["fid"] == m["fid"] and again["metrics"]["is"] == m["is"]

    fewer = evaluate_image_sets(gen, ref[:20], **kw)
    assert fewer["protocol"]["reference_cache"] == "written" and net.calls == 72 + 44
    other_net = StandInFeatureNet(seed=1)
    evaluate_image_sets(gen, ref, **{**kw, "inputs": _stand_in(other_net)})
    assert other_net.calls == 48  # another network's statistics are not reused
    # nor another device type's: a GPU's features round otherwise, and both sets must come from one device
    on_gpu = _stand_in(net, device="cuda:0")
    assert evaluate_image_sets(gen, ref, **{**kw, "inputs": on_gpu})["protocol"]["reference_cache"] == "written"
    assert len(list((tmp_path / "cache").glob("refstats-*.npz"))) == 4
    # The key is the caller's name for the images and the images themselves: other images under one name
    # (a direct caller's mistake) are computed, not answered with the statistics of the first.
    assert evaluate_image_sets(gen, ref[::-1].copy(), **kw)["protocol"]["reference_cache"] == "written"


def test_a_damaged_cache_entry_is_named_recomputed_and_replaced(tmp_path):
    gen, ref = _faces(0, 8), _faces(1, 8)
    kw = dict(metrics=["fid"], cache=RefCache("k", tmp_path / "cache"))
    first = evaluate_image_sets(gen, ref, inputs=_stand_in(), **kw)
    (entry,) = (tmp_path / "cache").glob("refstats-*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    net = StandInFeatureNet()
    with pytest.warns(UserWarning, match=f"reference statistics cache {entry} is unreadable"):
        again = evaluate_image_sets(gen, ref, inputs=_stand_in(net), **kw)
    assert net.calls == 16 and again["protocol"]["reference_cache"] == "written"  # both sets through the net
    assert again["metrics"]["fid"] == first["metrics"]["fid"]
    assert evaluate_image_sets(gen, ref, inputs=_stand_in(net), **kw)["protocol"]["reference_cache"] == "hit"


def test_a_cache_folder_that_cannot_be_written_warns_and_still_computes(tmp_path):
    gen, ref = _faces(0, 8), _faces(1, 8)
    (tmp_path / "read-only").write_text("a file where the cache folder should go")
    kw = dict(metrics=["fid"], inputs=_stand_in())
    with pytest.warns(UserWarning, match="reference statistics not cached"):
        out = evaluate_image_sets(gen, ref, cache=RefCache("k", tmp_path / "read-only" / "cache"), **kw)
    assert out["protocol"]["reference_cache"] == "not written"
    assert out["metrics"]["fid"] == evaluate_image_sets(gen, ref, cache=None, **kw)["metrics"]["fid"]


def test_an_unusable_covariance_fails_its_frechet_metric_alone(monkeypatch):
    """A square root with a large imaginary part (few images, as a short evaluation has) makes FID and
    pixel FD missing with the reason; the metrics computed beside them still count."""
    from dreamctl.errors import MetricUndefined
    from dreamctl.metrics import pixel_fd

    def unusable(*args, **kwargs):
        raise MetricUndefined("Fréchet distance: the covariance product's square root has an imaginary part of 0.003")

    monkeypatch.setattr(image_sets, "frechet_distance", unusable)
    monkeypatch.setattr(pixel_fd, "frechet_distance", unusable)
    gen, ref = _faces(0, 8), _faces(1, 8)
    out = evaluate_image_sets(gen, ref, metrics=["fid", "kid", "pixel_fd", "swd"], inputs=_stand_in())["metrics"]
    assert "imaginary part" in out["fid"]["missing"] and "imaginary part" in out["pixel_fd"]["missing"]
    assert "value" in out["kid"] and "value" in out["swd"]


def test_an_error_that_can_only_be_a_bug_stops_the_evaluation_instead_of_leaving_a_gap(monkeypatch):
    """Statistics of two feature sizes (a stale cache, a wrong network) raised DataError, which turned into a
    `missing` metric: the column went quiet instead of the command failing (style review C4)."""
    from dreamctl.errors import DataError, MetricUndefined
    from dreamctl.metrics.stats import frechet_distance

    with pytest.raises(DataError, match="disagree in shape") as err:
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    assert not isinstance(err.value, MetricUndefined)
    monkeypatch.setattr(image_sets, "frechet_distance", lambda *a: frechet_distance(np.zeros(2), np.eye(2),
                                                                                  np.zeros(3), np.eye(3)))
    with pytest.raises(DataError, match="disagree in shape"):
        evaluate_image_sets(_faces(0, 8), _faces(1, 8), metrics=["fid"], inputs=_stand_in())


def test_identical_sets_give_zero_frechet_distances_and_the_exact_unbiased_kid():
    imgs = _faces(2, 40)
    out = evaluate_image_sets(imgs, imgs, metrics=["fid", "kid", "pixel_fd"], inputs=_stand_in())
    assert abs(out["metrics"]["fid"]["value"]) < 1e-6
    assert abs(out["metrics"]["pixel_fd"]["value"]) < 1e-6
    # KID is unbiased, so for one set against itself it is slightly negative, and exactly
    # 2/m * (mean off-diagonal kernel - mean kernel) whatever subsets are drawn (all m images each time).
    from dreamctl.metrics.inception import batched_features
    feats = batched_features(StandInFeatureNet(), imgs)[0].astype(np.float64)
    k = (feats @ feats.T / feats.shape[1] + 1) ** 3
    m = len(k)
    exact = 2 / m * ((k.sum() - np.trace(k)) / (m - 1) - k.sum() / m)
    assert exact < 0 and out["metrics"]["kid"]["value"] == pytest.approx(exact, rel=1e-6)
    assert out["protocol"]["reference_cache"] == "off"


def test_missing_inception_is_reported_not_computed(wdir):
    out = evaluate_image_sets(_faces(3, 12), _faces(4, 12), metrics=["fid", "is", "pixel_fd"])
    for name in ("fid", "is"):
        reason = out["metrics"][name]["missing"]
        assert weights.INCEPTION in reason and str(wdir / weights.INCEPTION) in reason
    assert "value" in out["metrics"]["pixel_fd"]
    # No network was loaded: named as Inception (the protocol id is the Inception one) with no hash.
    fields = ("feature_network", "feature_network_sha256", "feature_network_stand_in")
    assert [out["protocol"][k] for k in fields] == ["inception-2015-12-05", None, False]
    assert [weights.INCEPTION in str(e) for e in check_weights(["fid", "swd"])] == [True]


def test_real_inception_path_from_weights_folder(wdir, tmp_path):
    write_fake_inception(wdir)
    # FID itself is left out: scipy's sqrtm of a 2048x2048 matrix takes about a minute on two cores.
    out = evaluate_image_sets(_faces(5, 12), _faces(6, 12), metrics=["kid", "is"],
                              cache=RefCache("k", tmp_path / "c"))
    proto = out["protocol"]
    assert proto["feature_network"] == "inception-2015-12-05" and proto["feature_network_stand_in"] is False
    assert proto["resize"] == RESIZE_CLEAN
    assert proto["feature_network_sha256"] == weights.sha256_file(wdir / weights.INCEPTION)
    assert out["protocol"]["weights"] == {weights.INCEPTION: weights.sha256_file(wdir / weights.INCEPTION)}
    assert all("value" in out["metrics"][m] and "note" not in out["metrics"][m] for m in ("kid", "is"))
    assert out["protocol"]["reference_cache"] == "written"


def test_bad_inputs_are_rejected():
    good = _faces(7, 4)
    kw = dict(metrics=["pixel_fd"])
    with pytest.raises(DataError, match="uint8"):
        evaluate_image_sets(good.astype(np.float32), good, **kw)
    with pytest.raises(DataError, match="shape"):
        evaluate_image_sets(good[..., 0], good, **kw)
    with pytest.raises(DataError, match="size"):
        evaluate_image_sets(good, _faces(8, 4, size=16), **kw)
    with pytest.raises(ConfigError, match="fidd"):
        evaluate_image_sets(good, good, metrics=["fidd"])
    # One image has no covariance and no pair: refused for either set, not scored as nan or a crash.
    for gen, ref in ((good[:1], good), (good, good[:1])):
        with pytest.raises(DataError, match="need at least 2 generated and 2 reference images"):
            evaluate_image_sets(gen, ref, **kw)


def test_images_too_small_for_swd_leave_it_missing_and_out_of_the_protocol():
    rng = np.random.default_rng(0)
    gen, ref = (rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    out = evaluate_image_sets(gen, ref, metrics=["swd"])
    assert set(out["metrics"]["swd"]) == {"missing"} and "swd" not in out["protocol"]


def test_inception_score_with_exactly_the_split_count_is_computed_for_both_sets():
    """IS needs at least IS_SPLITS images: exactly that many must give a value and the real-image value."""
    from dreamctl.metrics.image_sets import IS_SPLITS

    out = evaluate_image_sets(_faces(0, IS_SPLITS), _faces(1, IS_SPLITS), metrics=["is"],
                              inputs=_stand_in())["metrics"]["is"]
    assert np.isfinite(out["value"]) and np.isfinite(out["real_value"]) and "missing" not in out
    fewer = evaluate_image_sets(_faces(0, IS_SPLITS - 1), _faces(1, IS_SPLITS - 1), metrics=["is"],
                                inputs=_stand_in())
    assert f"at least {IS_SPLITS}" in fewer["metrics"]["is"]["missing"]


def test_the_protocol_counts_generated_and_reference_images_separately():
    """--num and --ref-num may differ; the file must say how many reference images the metrics used."""
    out = evaluate_image_sets(_faces(0, 6), _faces(1, 9), metrics=["pixel_fd"])
    assert out["protocol"]["num_generated"] == 6 and out["protocol"]["num_reference"] == 9


def test_kid_subsets_are_drawn_from_the_evaluations_seed():
    """The protocol records the seed: KID's random subsets must follow it (reproducible, and another seed
    draws other subsets), as kernel_inception_distance does with that seed's generator."""
    from dreamctl.metrics.inception import batched_features
    from dreamctl.metrics.stats import kernel_inception_distance

    gen, ref = _faces(0, 6), _faces(1, 12)  # fewer generated: subsets of 6 of the 12 reference images vary
    kw = dict(metrics=["kid"], inputs=_stand_in())
    by_seed = {s: evaluate_image_sets(gen, ref, seed=s, **kw)["metrics"]["kid"] for s in (0, 1)}
    assert by_seed[0]["value"] != by_seed[1]["value"]
    fg, fr = (batched_features(StandInFeatureNet(), x)[0] for x in (gen, ref))
    expected = kernel_inception_distance(fg, fr, num_subsets=100, max_subset_size=1000, rng=np.random.default_rng(1))
    assert (by_seed[1]["value"], by_seed[1]["std"]) == pytest.approx(expected, rel=1e-9)


def test_kid_of_two_whole_sets_reports_no_spread_and_its_subset_size():
    """With both sets at or under the subset size every random subset is both sets whole: a std over
    them would be rounding noise read as precision, so there is none; the subset size is recorded."""
    kw = dict(metrics=["kid"], inputs=_stand_in())
    whole = evaluate_image_sets(_faces(0, 8), _faces(1, 8), **kw)["metrics"]["kid"]
    assert "std" not in whole and "spread" not in whole and whole["subset_size"] == 8
    drawn = evaluate_image_sets(_faces(0, 6), _faces(1, 12), **kw)["metrics"]["kid"]
    assert drawn["std"] > 0 and drawn["spread"] == "subsets" and drawn["subset_size"] == 6


class _AbsDifference(torch.nn.Module):
    """Stands in for lpips.LPIPS: the mean absolute difference of the [-1, 1] images."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # lpips_diversity reads the device from it

    def forward(self, a, b):
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_real_diversity_is_measured_on_the_reference_images(wdir):
    """real_value is the data's own diversity, the yardstick for the samples' value: it must come from the
    reference set. Identical samples give 0; a black and a white reference image give |-1 - 1| = 2."""
    wdir.mkdir(parents=True)
    (wdir / weights.ALEXNET).write_bytes(b"stand-in backbone")  # only hashed into the protocol
    gen = np.full((3, 32, 32, 3), 128, np.uint8)
    ref = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)])
    out = evaluate_image_sets(gen, ref, metrics=["lpips"], inputs=MetricInputs(("lpips",), lpips=_AbsDifference()))
    lp = out["metrics"]["lpips"]
    assert lp["value"] == pytest.approx(0.0, abs=1e-12) and lp["real_value"] == pytest.approx(2.0)
    assert lp["real_std"] == pytest.approx(0.0, abs=1e-12)
    assert lp["spread"] == "pairs"  # its std is that of single pair distances
    # The files behind the number and how it was computed go into the protocol, as Inception's do for FID:
    # an evaluation file names the AlexNet backbone and the linear layers it used, and its pair count.
    files = (weights.ALEXNET, weights.LPIPS_LINEAR)
    assert out["protocol"]["weights"] == {name: weights.sha256_file(weights.path_of(name)) for name in files}
    assert out["protocol"]["lpips"] == {"net": "alex", "version": "0.1", "pairs": image_sets.LPIPS_PAIRS}


def test_lpips_on_images_under_alexnets_size_is_missing_and_the_rest_still_count(wdir):
    """Under 32 px AlexNet has nothing left to pool: LPIPS is missing with the size in its reason, records no
    weights or settings, and SWD beside it still has its value (one undefined metric does not stop the others)."""
    wdir.mkdir(parents=True)
    (wdir / weights.ALEXNET).write_bytes(b"stand-in backbone")
    gen, ref = _faces(0, 4, size=16), _faces(1, 4, size=16)
    out = evaluate_image_sets(gen, ref, metrics=["lpips", "swd"],
                              inputs=MetricInputs(("lpips", "swd"), lpips=_AbsDifference()))
    assert out["metrics"]["lpips"] == {"missing": "LPIPS (AlexNet) needs images of at least 32x32, got 16x16"}
    assert "value" in out["metrics"]["swd"]
    assert "lpips" not in out["protocol"] and out["protocol"]["weights"] == {}


def test_fid_from_fewer_than_2048_images_warns(monkeypatch):
    """Under 2,048 images (Inception's feature dimension) the covariance is rank-deficient and FID biased far
    upward: one warning line saying so, with the count; at the threshold, and for KID alone, none."""
    from dreamctl.metrics.inception import INCEPTION_POOL_DIM

    assert image_sets.FID_MIN_IMAGES == INCEPTION_POOL_DIM == 2048
    kw = dict(inputs=_stand_in())
    with pytest.warns(DreamctlWarning, match="FID from 12 generated and 12 reference images .*published FIDs, "
                      "which use 50,000") as got:
        evaluate_image_sets(_faces(0, 12), _faces(1, 12), metrics=["fid"], **kw)
    assert len(got) == 1 and "\n" not in str(got[0].message)
    monkeypatch.setattr(image_sets, "FID_MIN_IMAGES", 12)  # 2,048 images would take minutes here
    with pytest.warns(DreamctlWarning, match="FID from 11 reference images \\(under 12\\)"):  # the other set, too
        evaluate_image_sets(_faces(0, 12), _faces(1, 11), metrics=["fid"], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_image_sets(_faces(0, 12), _faces(1, 12), metrics=["fid"], **kw)
        monkeypatch.setattr(image_sets, "FID_MIN_IMAGES", 2048)
        evaluate_image_sets(_faces(0, 12), _faces(1, 12), metrics=["kid", "is"], **kw)


def test_pixel_fd_under_its_192_features_warns_as_fid_does(monkeypatch):
    """Pixel FD's covariance is 192 x 192: from fewer images it is rank-deficient and biased upward, as FID is
    under 2,048; FID warned, pixel FD said nothing (UX review). At the threshold, no warning."""
    from dreamctl.metrics.pixel_fd import PIXEL_FEATURES

    assert PIXEL_FEATURES == 192
    with pytest.warns(DreamctlWarning, match=r"pixel FD from 12 generated and 12 reference images \(under its 192 "
                                             r"features\) rests on a rank-deficient covariance") as got:
        evaluate_image_sets(_faces(0, 12), _faces(1, 12), metrics=["pixel_fd"])
    assert len(got) == 1
    monkeypatch.setattr(image_sets, "PIXEL_FEATURES", 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_image_sets(_faces(0, 12), _faces(1, 12), metrics=["pixel_fd"])


def test_kid_protocol_is_clean_fids():
    """100 subsets of at most 1,000 images (clean-fid's): every test set is smaller, so only this pins the size."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for n in (4, 5)]
    out = evaluate_image_sets(*imgs, metrics=["kid"], inputs=_stand_in())
    assert out["protocol"]["kid"] == {"num_subsets": 100, "max_subset_size": 1000}


@pytest.mark.filterwarnings("ignore:FID from")
def test_fid_uses_every_generated_image_when_there_are_more_than_reference_ones():
    """Every other test has as many or fewer generated images than reference ones: FID on only the first
    len(reference) generated images would pass them all (mutation audit). Written out with numpy and scipy."""
    from scipy import linalg

    from dreamctl.metrics.inception import batched_features

    generated, reference = _faces(5, 30), _faces(6, 20)
    out = evaluate_image_sets(generated, reference, metrics=["fid"], inputs=_stand_in())
    f_gen, f_ref = (batched_features(StandInFeatureNet(), x)[0].astype(np.float64) for x in (generated, reference))
    s_gen, s_ref = np.cov(f_gen, rowvar=False), np.cov(f_ref, rowvar=False)
    covmean = linalg.sqrtm(s_gen @ s_ref).real
    expected = ((f_gen.mean(0) - f_ref.mean(0)) ** 2).sum() + np.trace(s_gen + s_ref - 2 * covmean)
    assert out["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-5)


def test_inputs_prepared_for_other_metrics_are_refused_not_read_as_ready():
    """A metric the prepared inputs never decided on has no network and no reason: an error, not a silent gap."""
    with pytest.raises(ValueError, match="'fid' was not among those these inputs were prepared for \\(swd\\)"):
        evaluate_image_sets(_faces(0, 4), _faces(1, 4), ["swd", "fid"], inputs=metric_inputs(["swd"]))


def test_lpips_weights_at_fault_are_all_named_and_nothing_is_loaded(monkeypatch):
    """LPIPS needs two files. Both at fault: its one reason names both (one download fixes both), and lpips is not
    loaded from files already known to be bad. Loading anyway would replace that reason with build_lpips's
    first error, which names only the file it met first."""
    from dreamctl.errors import WeightsError
    from dreamctl.metrics import lpips_diversity

    def at_fault(name, root=None):
        raise WeightsError(f"weight file {name} is corrupt")

    def loaded(*args, **kwargs):
        raise AssertionError("lpips was loaded from files known to be at fault")

    monkeypatch.setattr(weights, "require", at_fault)
    monkeypatch.setattr(lpips_diversity, "build_lpips", loaded)
    missing = metric_inputs(["swd", "lpips"]).missing
    both = f"weight file {weights.ALEXNET} is corrupt; weight file {weights.LPIPS_LINEAR} is corrupt"
    assert missing == {"lpips": both}


def test_the_metric_networks_are_loaded_on_the_device_the_inputs_name(monkeypatch, tmp_path):
    """metric_inputs(device="cuda:0") says where the features are computed (the reference cache is keyed by it):
    Inception and LPIPS must be built there, not on the CPU the caller did not ask for. Fakes stand in for both
    builders, so no GPU is needed to see where they were asked to go."""
    from dreamctl.metrics import inputs, lpips_diversity

    built = []

    class Recorded(StandInFeatureNet):
        def __init__(self, weights_dir, device):
            super().__init__()
            built.append(("inception", weights_dir, device))

    monkeypatch.setattr(inputs, "_file_problems", lambda metric, weights_dir: None)  # every file intact
    monkeypatch.setattr(inputs, "InceptionFeatureNet", Recorded)
    monkeypatch.setattr(lpips_diversity, "build_lpips",
                        lambda weights_dir, device: built.append(("lpips", weights_dir, device)) or _AbsDifference())
    got = metric_inputs(["fid", "lpips"], weights_dir=tmp_path, device="cuda:0")
    assert built == [("inception", tmp_path, "cuda:0"), ("lpips", tmp_path, "cuda:0")]
    assert got.device == "cuda:0" and got.missing == {} and isinstance(got.feature_net, Recorded)


def test_a_cache_entry_missing_one_of_its_arrays_is_recomputed_and_replaced(tmp_path):
    """An entry whose key matches but which lacks an array (an npz rewritten by hand, or by another version)
    raises KeyError on reading: it is named and computed again, as a truncated one is, not a crash."""
    gen, ref = _faces(0, 8), _faces(1, 8)
    kw = dict(metrics=["fid", "kid"], cache=RefCache("k", tmp_path / "cache"))
    first = evaluate_image_sets(gen, ref, inputs=_stand_in(), **kw)
    (entry,) = (tmp_path / "cache").glob("refstats-*.npz")
    with np.load(entry) as z:
        kept = {name: z[name] for name in z.files if name != "feats"}
    with open(entry, "wb") as f:
        np.savez(f, **kept)
    net = StandInFeatureNet()
    with pytest.warns(DreamctlWarning, match=f"reference statistics cache {entry} is unreadable \\(KeyError\\)"):
        again = evaluate_image_sets(gen, ref, inputs=_stand_in(net), **kw)
    assert net.calls == 16 and again["protocol"]["reference_cache"] == "written"
    assert again["metrics"] == first["metrics"]
    with np.load(entry) as z:
        assert "feats" in z.files


def test_a_feature_networks_preprocessing_is_recorded_and_keys_its_cached_statistics(tmp_path):
    """Features depend on how images reach the network: the protocol records the network's own resize (not the
    clean one by default), and statistics cached under one resize are not read for another."""
    gen, ref = _faces(0, 8), _faces(1, 8)
    cache = RefCache("k", tmp_path / "cache")
    clean = evaluate_image_sets(gen, ref, ["kid"], inputs=_stand_in(), cache=cache)
    assert clean["protocol"]["resize"] == RESIZE_CLEAN and clean["protocol"]["reference_cache"] == "written"
    other = StandInFeatureNet()
    other.resize = "legacy: torch bilinear to 299"  # the same name and weights, another preprocessing
    out = evaluate_image_sets(gen, ref, ["kid"], inputs=_stand_in(other), cache=cache)
    assert out["protocol"]["resize"] == "legacy: torch bilinear to 299"
    assert out["protocol"]["reference_cache"] == "written" and other.calls == 16
    assert len(list((tmp_path / "cache").glob("refstats-*.npz"))) == 2
