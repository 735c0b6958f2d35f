"""Where a sampler starts, and the settings refused because x_t there still holds the image.

Sampling starts from pure noise at its first timestep t, where the forward process (DDPM eq. 4) keeps
sqrt(abar_t) of the image. That share must be small, or every sample starts from the wrong distribution.
Two settings made it large without a word: a DDIM step count that does not divide T (DDIM's uniform skip
i * (T // steps) took 600 of 1000 steps from t = 599, 58% image on the cosine schedule) and DDPM's linear
betas, given for T = 1000, at a much smaller T (60% image at T = 100). A count that divides T is DDIM's
own (DDIM-10 starts at t = 900, 15% image, as published) and a start lowered on purpose (sample.t_start)
is the user's choice: neither is checked.
"""

from __future__ import annotations

from dreamctl.config import DiffusionConfig, SampleConfig
from dreamctl.diffusion.samplers import timesteps
from dreamctl.diffusion.schedule import NoiseSchedule, schedule_for
from dreamctl.errors import ConfigError

# The most of the image a start from pure noise may leave in x_t (a schedule's end, a step count that does
# not divide T). DDIM-50 on the cosine schedule starts at 3%, DDIM-30 (not a divisor) at 7%; DDPM's linear
# schedule ends at 0.6%.
MAX_START_SIGNAL = 0.1


def start_signal(schedule: NoiseSchedule, steps: int, t_start: int | None = None) -> float:
    """sqrt(abar) at the first timestep the sampler visits: the share of x0 left in x_t there."""
    first = timesteps(schedule.num_timesteps, steps, t_start)[0]
    return schedule.alphas_cumprod[first].sqrt().item()


def check_sampler_start(diffusion: DiffusionConfig, sample: SampleConfig, source: str) -> None:
    """ConfigError naming `source` when the sample section starts from pure noise where x_t is part image."""
    if sample.t_start is not None:
        return
    schedule = schedule_for(diffusion)
    T = schedule.num_timesteps
    end = start_signal(schedule, T)
    if end > MAX_START_SIGNAL:
        scale = 1000 / T  # improved DDPM's rule: DDPM's betas are given for T = 1000
        scaled = (f" (improved DDPM scales DDPM's betas by 1000/T: --set diffusion.beta_start={1e-4 * scale:g} "
                  f"--set diffusion.beta_end={0.02 * scale:g})" if diffusion.schedule == "linear" and scale * 0.02 < 1
                  and scale != 1 else "")
        raise ConfigError(f"{source}: the {diffusion.schedule} schedule leaves {end:.0%} of the image in x_T "
                          f"(sqrt(abar) at t = T - 1; at most {MAX_START_SIGNAL:.0%}), and sampling starts from pure "
                          f"noise: raise diffusion.beta_end{scaled} or diffusion.num_timesteps, or use "
                          "diffusion.schedule=cosine")
    if sample.sampler != "ddim" or T % sample.steps == 0:
        return
    signal = start_signal(schedule, sample.steps)
    if signal > MAX_START_SIGNAL:
        first = timesteps(T, sample.steps)[0]
        below = max(d for d in range(1, sample.steps) if T % d == 0)  # the nearest counts DDIM runs as published
        above = min(d for d in range(sample.steps + 1, T + 1) if T % d == 0)
        raise ConfigError(f"{source}: DDIM's uniform skip i*(T // steps) starts {sample.steps} steps, which do not "
                          f"divide T = {T}, at t = {first}, where x_t still holds {signal:.0%} of the image (at most "
                          f"{MAX_START_SIGNAL:.0%} for a start from pure noise): use {below} or {above} steps (counts "
                          f"that divide T), or sample.t_start={T - 1} to space {sample.steps} steps evenly from T - 1")
