"""The UNet's GroupNorm: float32 without autocast, the autocast precision under it, and what that saves."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dreamctl.config import ModelConfig
from dreamctl.models.unet import GroupNorm, ResBlock, UNet, timestep_features

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


def test_inductor_lays_out_the_sampling_graph_channels_last_but_not_the_training_graph(capsys, monkeypatch):
    """benchmarks/inductor_layout.py asks torch's own heuristic: docs/benchmarks.md rests on this answer
    (why `compile bf16 channels_last` is a variant of its own), so a torch that decides otherwise fails here."""
    spec = importlib.util.spec_from_file_location("inductor_layout", REPO / "benchmarks" / "inductor_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["inductor_layout.py", "--recipe", "tiny", "--batch-size", "4"])
    module.main()
    out = capsys.readouterr().out
    assert "inference graph (sampling, dream's estimate pass): channels_last" in out
    assert "training graph (forward and backward): as given" in out
    assert "up.0.blocks.0.conv1 128->64" in out and "conv_out 16->3" in out


def test_the_benchmark_baseline_restores_float32_groupnorm_for_its_step_only():
    from dreamctl.bench.sections import _with_float32_groupnorm
    from dreamctl.models import unet

    seen = []
    _with_float32_groupnorm(lambda i: seen.append(unet.GroupNorm.forward is nn.GroupNorm.forward))(0)
    assert seen == [True] and unet.GroupNorm.forward is not nn.GroupNorm.forward


# ---- the network's formulas, pinned by hand on tiny inputs


def _tiny_model(attention_resolutions=(4,)) -> UNet:
    cfg = ModelConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=attention_resolutions,
                      num_heads=2, groups=2, time_features=8)
    return UNet(cfg, 8)


def test_timestep_features_are_cosines_then_sines_of_t_times_geometric_frequencies():
    """Checkpoints trained with [cos | sin] features only mean the same to a model that computes them so."""
    t = torch.tensor([0, 3, 250])
    # dim 4: half 2, frequencies 10000^(-0/2) = 1 and 10000^(-1/2) = 0.01
    expected = torch.tensor([[math.cos(v), math.cos(v * 0.01), math.sin(v), math.sin(v * 0.01)] for v in (0.0, 3.0, 250.0)])
    torch.testing.assert_close(timestep_features(t, 4), expected, rtol=1e-5, atol=1e-5)
    assert timestep_features(torch.tensor([0]), 6).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]  # cos 0 = 1 first


def test_resblock_with_zero_time_scale_and_shift_passes_the_normalised_features_unchanged():
    """Scale-shift is h * (1 + scale) + shift: a zero embedding projection must leave norm2(h) as it is, not zero it."""
    torch.manual_seed(0)
    block = ResBlock(4, 4, emb_dim=6, groups=2, dropout=0.0).eval()
    nn.init.normal_(block.conv2.weight)  # zero-initialised; random so the branch shows
    nn.init.normal_(block.conv2.bias)
    nn.init.zeros_(block.emb.weight)
    nn.init.zeros_(block.emb.bias)  # scale = shift = 0
    x, emb = torch.randn(2, 4, 5, 5), torch.randn(2, 6)
    h = block.conv1(F.silu(block.norm1(x)))
    expected = x + block.conv2(F.silu(block.norm2(h)))  # skip is the identity (4 -> 4 channels)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), expected)
        # a known scale 0.5 and shift -1 on every channel: norm2(h) * 1.5 - 1
        block.emb.bias.copy_(torch.tensor([0.5] * 4 + [-1.0] * 4))
        torch.testing.assert_close(block(x, emb), x + block.conv2(F.silu(block.norm2(h) * 1.5 - 1.0)))


def test_the_output_conv_sees_silu_of_the_final_groupnorm():
    """The UNet ends GroupNorm -> SiLU -> conv: the output layer's input must be SiLU of the norm's output."""
    torch.manual_seed(0)
    model = _tiny_model().eval()
    seen = {}
    model.norm_out.register_forward_hook(lambda m, args, out: seen.__setitem__("norm", out.detach()))
    model.conv_out.register_forward_hook(lambda m, args, out: seen.__setitem__("conv_in", args[0].detach()))
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 500]))
    assert (seen["norm"] < 0).any()  # else SiLU and identity could not be told apart
    torch.testing.assert_close(seen["conv_in"], F.silu(seen["norm"]))


def test_middle_attention_only_where_the_middle_resolution_is_listed():
    """8x8 images over two levels leave a 2x2 middle: attention there only if attention_resolutions has 2."""
    from dreamctl.models.unet import Attention

    without = _tiny_model(attention_resolutions=(4,))
    assert isinstance(without.mid_attn, nn.Identity)
    assert isinstance(without.down[1].attn, Attention) and isinstance(without.down[0].attn, nn.Identity)
    assert isinstance(_tiny_model(attention_resolutions=(2,)).mid_attn, Attention)
