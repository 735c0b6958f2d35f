"""The UNet's GroupNorm: float32 without autocast, the autocast precision under it, and what that saves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from dreamctl.models.unet import GroupNorm

REPO = Path(__file__).resolve().parent.parent


def test_groupnorm_is_nn_groupnorm_without_autocast_and_keeps_bf16_under_it():
    torch.manual_seed(0)
    ours, plain = GroupNorm(4, 16), nn.GroupNorm(4, 16)
    nn.init.normal_(ours.weight)
    nn.init.normal_(ours.bias)
    plain.load_state_dict(ours.state_dict())  # the same parameters under the same names
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), plain(x.bfloat16().float()), rtol=2e-2, atol=2e-2)  # bf16 rounding


def test_activation_memory_benchmark_counts_less_than_float32_groupnorm(capsys, monkeypatch):
    """benchmarks/activation_memory.py (fake CUDA tensors, no GPU): ours saves less than the baseline."""
    spec = importlib.util.spec_from_file_location("activation_memory", REPO / "benchmarks" / "activation_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["activation_memory.py", "--recipe", "tiny", "--batch-size", "4"])
    module.main()
    lines = capsys.readouterr().out.splitlines()
    ours, base = (float(line.rsplit("; ", 1)[1].split("x")[0]) for line in lines[1:3])
    assert base == 1.0 and ours < 0.8


def test_the_benchmark_baseline_restores_float32_groupnorm_for_its_step_only():
    from dreamctl.bench.sections import _with_float32_groupnorm
    from dreamctl.models import unet

    seen = []
    _with_float32_groupnorm(lambda i: seen.append(unet.GroupNorm.forward is nn.GroupNorm.forward))(0)
    assert seen == [True] and unet.GroupNorm.forward is not nn.GroupNorm.forward
