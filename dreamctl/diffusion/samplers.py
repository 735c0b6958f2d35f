"""DDIM sampling with eta, one step function and one loop; DDPM ancestral sampling is its eta = 1
on all T timesteps (Song et al. 2021, section 4.1: sigma(eta=1) is DDPM's posterior variance).

Signatures follow k-diffusion: `sample(model, schedule, noise, ...)` takes the initial
noise and returns x0. Randomness inside the loop (eta > 0, DDPM) comes from one
torch.Generator per image when a list is given, so image i depends only on its seed,
whatever the batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dreamctl.diffusion.schedule import NoiseSchedule, eps_from_x0, x0_from_eps

Callback = Callable[[int, int, Tensor, Tensor], None]  # (i, t, x_t, x0_hat)
Generators = torch.Generator | Sequence[torch.Generator] | None


def timesteps(num_timesteps: int, steps: int, t_start: int | None = None) -> list[int]:
    """The timesteps visited, largest first.

    Default: DDIM's uniform skip t_i = i * (T // steps) (Song et al. 2021, Appendix D.2, "linear").
    With t_start, `steps` timesteps evenly spaced on [0, t_start]: starting below T - 1
    avoids the last steps of the schedule, which carry almost no signal.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if t_start is None:
        ts = [i * (num_timesteps // steps) for i in range(steps)]
    else:
        if not steps - 1 <= t_start < num_timesteps:
            raise ValueError(f"t_start must be in [{steps - 1}, {num_timesteps - 1}] for {steps} steps, got {t_start}")
        if steps == 1:
            return [t_start]
        ts = sorted({round(i * t_start / (steps - 1)) for i in range(steps)})
    return ts[::-1]


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x; with a list of generators, row i comes from generator i. Drawn in
    float32 either way, then cast: the same seed gives the same noise whatever x's dtype."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return to_device(noise_rows(generator, x.shape[1:]), x.device).to(x.dtype)


def noise_rows(generators: Sequence[torch.Generator], shape: Sequence[int]) -> Tensor:
    """Row i of standard normal noise drawn in float32 from generators[i], on the generators' device: the one
    rule by which an image's seed fixes its noise (generate.initial_noise, then each step's randn_like)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32)
                        for g in generators])


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """A CPU tensor onto `device`; on CUDA through pinned memory and asynchronously, so the CPU goes on
    (drawing the next step's per-image noise) while the GPU computes, instead of waiting for its queue."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _abar(schedule: NoiseSchedule, t: int) -> float:
    """alphas_cumprod at t, with abar = 1 at t = -1 (the clean image)."""
    return 1.0 if t < 0 else schedule.alphas_cumprod[t].item()


def ddim_step(schedule: NoiseSchedule, x_t: Tensor, t: int, t_prev: int, eps: Tensor, *, eta: float,
              noise: Tensor | None, clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """One DDIM update from t to t_prev (Song et al. 2021, eq. 12 and 16). Returns (x_prev, x0_hat)."""
    abar, abar_prev = _abar(schedule, t), _abar(schedule, t_prev)
    x0_hat = x0_from_eps(x_t, eps, abar**0.5, (1 - abar) ** 0.5)  # one t for the batch: scalars, not tables
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps = eps_from_x0(x_t, x0_hat, abar**0.5, (1 - abar) ** 0.5)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
    x_prev = abar_prev**0.5 * x0_hat + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


@torch.no_grad()
def sample(model: nn.Module | Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, noise: Tensor, *,
           steps: int, eta: float | None = None, method: str = "ddim", generator: Generators = None,
           clip_x0: bool = False, t_start: int | None = None, callback: Callback | None = None) -> Tensor:
    """Denoise `noise` (x_T) into images, nominally in [-1, 1] (clamped only through clip_x0's x0 estimate).

    method 'ddim' visits `timesteps(T, steps, t_start)` with stochasticity eta (default 0); method
    'ddpm' is ancestral sampling: all T steps with eta = 1, the posterior variance.
    """
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"unknown sampler {method!r}: expected 'ddim' or 'ddpm'")
    if method == "ddpm":
        if steps != schedule.num_timesteps or t_start is not None or eta not in (None, 1.0):
            raise ValueError("DDPM ancestral sampling visits all T timesteps with eta 1: use steps=T, no t_start "
                             "and eta 1 (or None), or ddim")
        eta = 1.0
    eta = 0.0 if eta is None else eta
    ts = timesteps(schedule.num_timesteps, steps, t_start)
    x = noise
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        # Used up within this step: a network replayed as a CUDA graph (sample.compile_mode) overwrites
        # its outputs at the next call, so eps must not be kept across steps.
        eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        z = randn_like(x, generator) if t_prev >= 0 and eta > 0 else None
        x, x0_hat = ddim_step(schedule, x, t, t_prev, eps, eta=eta, noise=z, clip_x0=clip_x0)
        if callback is not None:
            callback(i, t, x, x0_hat)
    return x
