"""A DDPM/ADM-style UNet that predicts the noise eps from (x_t, t).

Layout (the CelebA study's network at its default config, 54.85M parameters at 64x64):
sinusoidal time features -> MLP; input conv; per level `num_res_blocks` residual blocks,
optional self-attention, one skip connection per level, stride-2 conv down; a middle of
residual block, attention, residual block; per level a transposed conv up, concatenation
with that level's skip, residual blocks and optional attention; GroupNorm, SiLU, conv out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamctl.config import ModelConfig


def timestep_features(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of the timestep (Vaswani et al. 2017, as used by DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm(nn.GroupNorm):
    """GroupNorm that keeps the autocast precision (bf16) instead of returning float32.

    CUDA autocast runs group_norm in float32 and returns float32, so the SiLU, scale-shift and
    residual after every norm would carry float32 activations: most of what a step saves for
    backward. Here the norm takes and returns bf16; the kernel still accumulates its statistics
    in float32 (ADM's GroupNorm32 likewise returns its input's precision). Without autocast it is
    nn.GroupNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the time embedding scales and shifts after the second norm."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, through scaled_dot_product_attention."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # contiguous: SDPA's fused kernels need a unit stride on the last dim, else it falls back to math
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(dim=1)  # each (b, heads, hw, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """Residual blocks at one resolution, then optional attention."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, emb_dim: int, attention: bool, cfg: ModelConfig):
        super().__init__()
        widths = [c_in] + [c_out] * n_blocks
        self.blocks = nn.ModuleList(
            ResBlock(a, b, emb_dim, cfg.groups, cfg.dropout) for a, b in zip(widths[:-1], widths[1:])
        )
        self.attn = Attention(c_out, cfg.num_heads, cfg.groups) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return self.attn(x)


class UNet(nn.Module):
    """eps_hat = UNet(x_t, t) for images of shape (B, 3, image_size, image_size)."""

    def __init__(self, cfg: ModelConfig, image_size: int):
        super().__init__()
        emb_dim = 4 * cfg.channels
        self.time_features = cfg.time_features
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(3, cfg.channels, 3, padding=1)

        widths = [cfg.channels * m for m in cfg.channel_mult]
        res, c = image_size, cfg.channels
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for w in widths:
            self.down.append(Level(c, w, cfg.num_res_blocks, emb_dim, res in cfg.attention_resolutions, cfg))
            self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            res, c = res // 2, w

        mid_attn = res in cfg.attention_resolutions
        self.mid1 = ResBlock(c, c, emb_dim, cfg.groups, cfg.dropout)
        self.mid_attn = Attention(c, cfg.num_heads, cfg.groups) if mid_attn else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, cfg.groups, cfg.dropout)

        self.upsample, self.up = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            res *= 2
            self.upsample.append(nn.ConvTranspose2d(c, w, 4, stride=2, padding=1))
            self.up.append(Level(2 * w, w, cfg.num_res_blocks, emb_dim, res in cfg.attention_resolutions, cfg))
            c = w

        self.norm_out = GroupNorm(cfg.groups, c)
        self.conv_out = _zero(nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_features(t, self.time_features).to(x.dtype))
        h = self.conv_in(x)
        skips = []
        for level, down in zip(self.down, self.downsample):
            h = level(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for up, level in zip(self.upsample, self.up):
            h = level(torch.cat([up(h), skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_model(cfg: ModelConfig, image_size: int) -> UNet:
    """The UNet described by a recipe's model section, for square images of `image_size`."""
    return UNet(cfg, image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
