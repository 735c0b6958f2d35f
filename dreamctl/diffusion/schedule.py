"""Noise schedules and the closed-form quantities of the forward process (Ho et al. 2020).

All tables are float64 and cast to the input's dtype and device at use, so that
alphas_cumprod near 1 or 0 keeps its precision when it matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from dreamctl.config import DiffusionConfig


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule (Ho et al. 2020, section 4), given for T = 1000."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


def x0_from_eps(x_t: Tensor, eps: Tensor, sqrt_abar: Tensor | float, sqrt_one_minus_abar: Tensor | float) -> Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar): the forward process solved for x0 (DDPM eq. 15)."""
    return (x_t - sqrt_one_minus_abar * eps) / sqrt_abar


def eps_from_x0(x_t: Tensor, x0: Tensor, sqrt_abar: Tensor | float, sqrt_one_minus_abar: Tensor | float) -> Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar): the same, solved for the noise (after clipping x0)."""
    return (x_t - sqrt_abar * x0) / sqrt_one_minus_abar


def _gather(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] shaped to broadcast over `like` (batch first), in like's dtype; table is on like's device."""
    return table[t.to(table.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The forward process q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) for t in [0, T)."""

    betas: Tensor  # float64, length T

    def __post_init__(self) -> None:
        if self.betas.dtype != torch.float64 or self.betas.ndim != 1:
            raise ValueError("betas must be a 1-D float64 tensor")

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        return torch.cumprod(1 - self.betas, dim=0)

    @cached_property
    def _on_device(self) -> dict[tuple[str, torch.device], Tensor]:
        return {}

    @cached_property
    def _tables(self) -> dict[str, Tensor]:
        """Every per-timestep coefficient, computed once in float64 on the CPU."""
        abar = self.alphas_cumprod
        return {"sqrt_abar": abar.sqrt(), "sqrt_one_minus_abar": (1 - abar).sqrt()}

    def _table(self, name: str, device: torch.device) -> Tensor:
        """A coefficient table on `device`, copied there once: a per-step host-to-device copy stalls CUDA."""
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = self._tables[name].to(device)
        return self._on_device[key]

    def sqrt_abar(self, t: Tensor, like: Tensor) -> Tensor:
        return _gather(self._table("sqrt_abar", like.device), t, like)

    def sqrt_one_minus_abar(self, t: Tensor, like: Tensor) -> Tensor:
        return _gather(self._table("sqrt_one_minus_abar", like.device), t, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
        return self.sqrt_abar(t, x0) * x0 + self.sqrt_one_minus_abar(t, x0) * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert q_sample for x0 given the noise (DDPM eq. 15), per-sample t."""
        return x0_from_eps(x_t, eps, self.sqrt_abar(t, x_t), self.sqrt_one_minus_abar(t, x_t))

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Invert q_sample for the noise given x0, per-sample t."""
        return eps_from_x0(x_t, x0, self.sqrt_abar(t, x_t), self.sqrt_one_minus_abar(t, x_t))


def make_schedule(kind: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """A NoiseSchedule of `kind` 'linear' or 'cosine' with T = num_timesteps."""
    if kind == "linear":
        return NoiseSchedule(linear_betas(num_timesteps, beta_start, beta_end))
    if kind == "cosine":
        return NoiseSchedule(cosine_betas(num_timesteps))
    raise ValueError(f"unknown schedule {kind!r}: expected 'linear' or 'cosine'")


def schedule_for(cfg: DiffusionConfig) -> NoiseSchedule:
    """The schedule a recipe's diffusion section describes."""
    return make_schedule(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
