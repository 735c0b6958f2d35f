"""Weight files: missing and corrupt files, first-use records, the Inception and LPIPS loaders, the CLI.

No real weights exist here and nothing may be downloaded: the autouse fixture points the
weights folder and TORCH_HOME at temporary folders and makes any download attempt fail.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from dreamctl.errors import WeightsError
from dreamctl.metrics import download, weights
from dreamctl.metrics.inception import InceptionFeatureNet, clean_resize
from feature_fakes import write_fake_inception


@pytest.mark.parametrize("name,checksum", [(weights.INCEPTION, "no published sha256, recorded on first use"),
                                           (weights.ALEXNET, "sha256 prefix 7be5be79")])
def test_missing_weight_names_file_address_path_and_checksum(wdir, name, checksum):
    with pytest.raises(WeightsError) as info:
        weights.require(name)
    msg = str(info.value)
    assert name in msg and weights.REGISTRY[name].url in msg and checksum in msg
    assert str(wdir / name) in msg and "dreamctl weights" in msg


def test_corrupt_alexnet_is_reported_with_hashes(wdir):
    wdir.mkdir(parents=True)
    (wdir / weights.ALEXNET).write_bytes(b"not a checkpoint")
    st = weights.status(weights.ALEXNET)
    assert st.present and not st.intact and st.expected == "prefix 7be5be79"
    with pytest.raises(WeightsError, match="corrupt") as info:
        weights.require(weights.ALEXNET)
    assert st.actual in str(info.value) and str(wdir / weights.ALEXNET) in str(info.value)
    assert weights.REGISTRY[weights.ALEXNET].url in str(info.value)


def test_bundled_lpips_linear_weights_are_intact():
    st = weights.status(weights.LPIPS_LINEAR)
    assert st.present and st.intact and st.path.parts[-3:] == ("weights", "v0.1", "alex.pth")


def test_check_weights_lists_every_problem_once(wdir):
    errors = weights.check_weights(["fid", "kid", "is", "lpips", "swd", "pixel_fd"])
    assert [e.__class__ for e in errors] == [WeightsError, WeightsError]
    assert weights.INCEPTION in str(errors[0]) and weights.ALEXNET in str(errors[1])
    assert weights.check_weights(["swd", "pixel_fd"]) == []


def test_default_weights_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMCTL_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.weights_dir() == tmp_path / ".cache" / "dreamctl" / "weights"
    assert weights.weights_dir(tmp_path / "x") == tmp_path / "x"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path / "a-file"))  # errors would say "put it at a-file/NAME"
    with pytest.raises(WeightsError, match="a-file is a file; point it at the folder"):
        weights.weights_dir()


def test_clean_resize_gives_299_float_images():
    imgs = np.zeros((2, 16, 16, 3), np.uint8)
    imgs[0] = 200
    imgs[1, :, :8] = 255
    x = clean_resize(imgs)
    assert x.shape == (2, 3, 299, 299) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 200.0, atol=1e-3)  # bicubic keeps a constant image constant
    assert x[1].min() >= 0 and x[1].max() <= 255 and x[1, :, :, :140].mean() > 250


def test_inception_loads_from_weights_folder_and_records_hash(wdir):
    path = write_fake_inception(wdir)
    net = InceptionFeatureNet(device="cpu")
    record = json.loads((wdir / f"{weights.INCEPTION}.sha256.json").read_text())
    assert record["sha256"] == net.weights_sha256 == weights.sha256_file(path)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pool, logits = net.features(imgs)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    w = net.output_weight.numpy()
    np.testing.assert_allclose(logits, pool @ w.T, rtol=1e-4, atol=1e-4)  # no output bias
    # The file changes after its first good load: now it is corrupt.
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(WeightsError, match="corrupt"):
        weights.require(weights.INCEPTION)


def test_garbage_inception_file_is_a_weights_error(wdir, capsys):
    """No digest is published for Inception: before its first load, its layout is checked at least."""
    from dreamctl.cli import main

    wdir.mkdir(parents=True)
    (wdir / weights.INCEPTION).write_bytes(np.random.default_rng(0).bytes(1000))
    assert not weights.status(weights.INCEPTION).intact
    with pytest.raises(WeightsError, match="not a TorchScript archive") as info:
        InceptionFeatureNet()
    assert weights.REGISTRY[weights.INCEPTION].url in str(info.value)
    assert not (wdir / f"{weights.INCEPTION}.sha256.json").exists()
    main(["weights"])
    assert f"{weights.INCEPTION}  [CORRUPT]" in capsys.readouterr().out


def test_a_zip_that_is_not_inception_fails_at_its_first_load(wdir, capsys):
    """A well-formed TorchScript archive passes the layout check, unverified, and fails when loaded."""
    from dreamctl.cli import main

    wdir.mkdir(parents=True)
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(wdir / weights.INCEPTION))
    st = weights.status(weights.INCEPTION)
    assert st.intact and not st.verified
    main(["weights"])
    assert "[ok: its sha256 is recorded at its first successful load]" in capsys.readouterr().out
    with pytest.raises(WeightsError, match="does not load|output.weight"):
        InceptionFeatureNet()
    assert not (wdir / f"{weights.INCEPTION}.sha256.json").exists()


def test_inception_without_output_layer_is_a_weights_error(wdir):
    write_fake_inception(wdir, with_output=False)
    with pytest.raises(WeightsError, match="output.weight"):
        InceptionFeatureNet()


def test_an_inception_file_without_1008_classes_is_refused(wdir):
    """clean-fid's Inception has 1008 output classes; a (10, 2048) output layer is another network, refused in
    one line naming the file, what it holds and what to put where, and not recorded as the Inception."""
    path = write_fake_inception(wdir, num_classes=10)
    with pytest.raises(WeightsError) as info:
        InceptionFeatureNet()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "(1008, 2048)" in msg and "found (10, 2048)" in msg
    assert f"download {weights.REGISTRY[weights.INCEPTION].url} to {path}" in msg
    assert not (wdir / f"{weights.INCEPTION}.sha256.json").exists()


def test_download_checks_hash_before_anything_is_written(wdir, tmp_path):
    class _Response(io.BytesIO):
        def __enter__(self):
            return self

    fake = lambda url, timeout: _Response(b"wrong bytes")  # noqa: E731
    with pytest.raises(WeightsError, match="nothing was written"):
        download.download(weights.ALEXNET, opener=fake)
    assert list(wdir.iterdir()) == []  # neither the file nor a temp file
    # A file without a published hash must at least be a TorchScript archive (not an error page) ...
    with pytest.raises(WeightsError, match=r"expected a TorchScript archive\); nothing was written"):
        download.download(weights.INCEPTION, opener=fake)
    assert list(wdir.iterdir()) == []
    # ... and is then written atomically, a stale first-use record dropped.
    archive = write_fake_inception(tmp_path / "served").read_bytes()
    (wdir / f"{weights.INCEPTION}.sha256.json").write_text(json.dumps({"sha256": "0" * 64}))
    path = download.download(weights.INCEPTION, opener=lambda url, timeout: _Response(archive))
    assert path.read_bytes() == archive and sorted(p.name for p in wdir.iterdir()) == [weights.INCEPTION]


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum):UserWarning")  # lpips calls alexnet(pretrained=False)
def test_lpips_backbone_mapping_and_missing_backbone(wdir):
    import lpips
    import torchvision

    from dreamctl.metrics.lpips_diversity import build_lpips, load_alexnet_features, lpips_diversity

    with pytest.raises(WeightsError, match=weights.ALEXNET):
        build_lpips()
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    state = torchvision.models.alexnet(weights=None).state_dict()
    load_alexnet_features(model.net, state)
    own = model.net.state_dict()
    assert torch.equal(own["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(own["slice5.10.bias"], state["features.10.bias"])
    imgs = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    same = np.repeat(imgs[:1], 6, axis=0)
    assert lpips_diversity(model, same, num_pairs=8)[0] == pytest.approx(0.0, abs=1e-6)
    d1 = lpips_diversity(model, imgs, num_pairs=8, seed=3)
    assert d1[0] > 0 and d1 == lpips_diversity(model, imgs, num_pairs=8, seed=3)


def test_weights_cli_lists_files(wdir, capsys, monkeypatch):
    from dreamctl.cli import main

    monkeypatch.setattr(download, "download", lambda *a, **k: pytest.fail("--download was not asked for"))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in weights.REGISTRY:
        assert name in out
    assert "missing" in out and str(wdir) in out and weights.REGISTRY[weights.INCEPTION].url in out
    assert main(["weights", "--check"]) == 2  # for scripts: a long run checks its evaluation's files first


def test_download_missing_refetches_a_corrupt_file_as_well_as_an_absent_one(wdir, monkeypatch):
    """`dreamctl weights --download` must repair a truncated download, and leave an intact file alone."""
    fetched = []
    monkeypatch.setattr(download, "download", lambda name, root=None, **kw: fetched.append(name) or wdir / name)
    wdir.mkdir(parents=True)
    (wdir / weights.ALEXNET).write_bytes(b"truncated")  # present, but not the file
    assert download.download_missing() == [wdir / weights.INCEPTION, wdir / weights.ALEXNET]  # Inception: absent
    assert fetched == [weights.INCEPTION, weights.ALEXNET]  # never the bundled LPIPS file
    fetched.clear()
    write_fake_inception(wdir)  # intact by its layout: nothing to fetch
    assert download.download_missing() == [wdir / weights.ALEXNET] and fetched == [weights.ALEXNET]


def test_a_zip_with_a_damaged_central_directory_is_a_corrupt_inception_file(wdir, capsys):
    """zipfile.is_zipfile reads the end record alone: a damaged directory after it is found only on opening."""
    from dreamctl.cli import main

    wdir.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/constants.pkl", b"a" * 100)
        z.writestr("m/code/x.py", b"b" * 100)
    data = bytearray(buf.getvalue())
    at = data.rfind(b"PK\x01\x02")  # the central directory's last entry
    data[at:at + 4] = b"XXXX"
    (wdir / weights.INCEPTION).write_bytes(bytes(data))
    assert zipfile.is_zipfile(wdir / weights.INCEPTION)
    assert not weights.status(weights.INCEPTION).intact
    with pytest.raises(WeightsError, match="corrupt: not a TorchScript archive") as info:
        weights.require(weights.INCEPTION)
    assert str(wdir / weights.INCEPTION) in str(info.value) and "dreamctl weights" in str(info.value)
    assert main(["weights", "--check"]) == 2
    assert f"{weights.INCEPTION}  [CORRUPT]" in capsys.readouterr().out


def test_a_binary_checksum_record_is_a_weights_error_naming_it(wdir, capsys):
    from dreamctl.cli import main

    wdir.mkdir(parents=True)
    (wdir / weights.INCEPTION).write_bytes(b"any bytes")  # the record is read whatever the file holds
    record = wdir / f"{weights.INCEPTION}.sha256.json"
    record.write_bytes(bytes(range(128, 228)))
    with pytest.raises(WeightsError, match=f"checksum record {record} is unreadable") as info:
        weights.require(weights.INCEPTION)
    assert "delete it" in str(info.value) and "dreamctl weights" in str(info.value)
    assert main(["weights", "--check"]) == 2
    err = capsys.readouterr().err
    assert f"checksum record {record} is unreadable" in err and "Traceback" not in err
    assert record.read_bytes() == bytes(range(128, 228))  # left for the user to delete


def test_a_read_only_weights_folder_loads_inception_with_a_warning(wdir, monkeypatch):
    """A shared weights folder the user cannot write: the first-use record is not written, which is said,
    and the evaluation goes on (the file loaded correctly; only a later change would go unnoticed)."""
    from dreamctl.errors import DreamctlWarning

    path = write_fake_inception(wdir)

    def refuse(target, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(weights.atomic, "write_json", refuse)
    with pytest.warns(DreamctlWarning, match=f"cannot record the sha256 of {path} .*Permission denied"):
        net = InceptionFeatureNet(device="cpu")
    assert net.weights_sha256 == weights.sha256_file(path)
    assert not (wdir / f"{weights.INCEPTION}.sha256.json").exists()


def test_each_metric_needs_the_weight_files_it_loads():
    """What `dreamctl weights` and evaluate's missing-weights message tell a user to fetch for each metric."""
    from dreamctl.metrics.registry import METRICS

    inception = ("inception-2015-12-05.pt",)
    assert {m: info.weights for m, info in METRICS.items()} == {
        "fid": inception, "kid": inception, "is": inception,
        "lpips": ("alexnet-owt-7be5be79.pth", "lpips-v0.1-alex.pth"), "swd": (), "pixel_fd": ()}
