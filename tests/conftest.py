"""Fixtures shared by the test files."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

SYNTHETIC = {"count": 256, "seed": 0, "valid_fraction": 0.05, "test_fraction": 0.05}
SYNTHETIC_RESOLUTION = 32
SYNTHETIC_SHARD_SIZE = 100  # train 230 -> three shards (100, 100, 30), valid 13, test 13


def prepare_synthetic(out: Path, **overrides):
    """Prepare the standard tiny synthetic set into `out` (workers=1: no process pool)."""
    from dreamctl.data.prepare import prepare_data
    from dreamctl.data.sources import list_source

    params = {**SYNTHETIC, **{k: v for k, v in overrides.items() if k in SYNTHETIC}}
    options = {"resolution": SYNTHETIC_RESOLUTION, "shard_size": SYNTHETIC_SHARD_SIZE, "workers": 1}
    options.update({k: v for k, v in overrides.items() if k not in SYNTHETIC})
    return prepare_data(list_source("synthetic", **params), out, **options)


def prepare_listing(kind: str, root: Path | None, out: Path, **kw):
    """prepare_data(list_source(kind, root, ...), out, ...) at 16px with one worker; `kw` goes to whichever takes it."""
    from dreamctl.data.prepare import prepare_data
    from dreamctl.data.sources import list_source

    listing_kw = {k: kw.pop(k) for k in ("limit", "count", "seed", "valid_fraction", "test_fraction") if k in kw}
    return prepare_data(list_source(kind, root, **listing_kw), out, **{"resolution": 16, "workers": 1, **kw})


def dead_pid() -> int:
    """A pid whose process has exited (and been reaped): what a writer killed mid-write leaves in its file names."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def shard_images(path: Path):
    """The uint8 (N, H, W, 3) images of one shard file."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["images"][()]


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 drawn 32x32 faces (seed 0) prepared into train/valid/test shards (230/13/13).

    Shared by the whole session: copy it before changing anything in it.
    """
    return prepare_synthetic(tmp_path_factory.mktemp("synthetic32") / "data").out_dir


@pytest.fixture
def seeded(tmp_path: Path) -> list[Path]:
    """Four run folders written by hand for compare and its plots (run_folders.seeded_runs)."""
    from run_folders import seeded_runs

    return seeded_runs(tmp_path)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test: weights and torch hub folders are empty temporary ones, and any download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Commands run on the CPU, as in CI, even where a GPU is visible: what they write (bf16 sample folders
    # and protocol ids on a GPU) would otherwise depend on the machine.
    monkeypatch.setattr("dreamctl.runtime.default_device", lambda: "cpu")
    return tmp_path / "weights"


@pytest.fixture
def wdir(offline: Path) -> Path:
    """The (empty) weights folder of this test."""
    return offline
