"""Tiny training runs for the training, checkpoint, sample and evaluate tests (a helper module, not a test file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dreamctl.cli import main
from dreamctl.config import set_args
from dreamctl.runtime import Runtime
from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint

# 32x32 data, a 2-level UNet of width 8; 64 images at batch 8 = 8 steps per epoch.
NET = ["model.channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[8]", "model.num_heads=2",
       "model.groups=4", "model.time_features=16", "train.batch_size=8", "data.limit=64",
       "train.sample_every=1000", "train.sample_grid=4", "sample.steps=2"]
TINY = NET + ["train.epochs=3", "train.log_every=2", "train.checkpoint_every=4", "optim.ema_decay=0.9"]
# DREAM (the study's variant) starts at epoch 1 = step 8: the resume tests cross it and an epoch boundary.
CONSERVATIVE = TINY + ["loss.start_epoch=1", "loss.ramp_epochs=2"]


def train(run: Path, data: Path, overrides: list[str], recipe: str = "tiny-conservative") -> int:
    return main(["train", "--recipe", recipe, "--data", str(data), "--run-dir", str(run), *set_args(overrides)])


def final_weights(run: Path) -> dict:
    ckpt = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    return {"model": ckpt["model"], "ema": ckpt["ema"], "step": ckpt["step"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


# For sampling and evaluation: 4 steps of the tiny UNet, DDIM with 2 steps from the top (t_start null).
SAMPLE_TINY = NET + ["train.max_steps=4", "sample.batch_size=8", "sample.t_start=null"]
CPU = Runtime(torch.device("cpu"), "fp32")


def trained_for_sampling(root: Path, data: Path) -> tuple[Path, Path]:
    """(run folder, its own copy of the data: evaluate writes its reference cache there)."""
    shutil.copytree(data, root / "data")
    run = root / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(root / "data"), "--run-dir", str(run),
                 *set_args(SAMPLE_TINY)]) == 0
    return run, root / "data"
