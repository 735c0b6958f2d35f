"""The steps being timed: ours, built from the training loop's own pieces, and the study's naive one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, get_args

import torch
from torch import Tensor, nn

from dreamctl.config import LossKind, Recipe
from dreamctl.diffusion.losses import Cost, Stats, backward_loss, conservative_lambda, per_sample, rectified_input
from dreamctl.diffusion.schedule import NoiseSchedule
from dreamctl.errors import RunError
from dreamctl.models import unet
from dreamctl.runtime import Runtime
from dreamctl.training.loop import train_step
from dreamctl.training.state import TrainState

KINDS = tuple(get_args(LossKind))  # every loss kind, in the schema's order
NAIVE = "naive_conservative"

# --- the baseline being beaten -------------------------------------------------------------

def naive_conservative_loss(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                            *, epoch: int, lambda_min: float, lambda_max: float, alpha: float, ramp_epochs: int,
                            **_: Any) -> Tensor:
    """BASELINE, NOT USED FOR TRAINING: the CelebA study's conservative step as it was written.

    A third, redundant forward pass recomputes eps_hat (ours reuses the detached first
    prediction), and both terms are summed into one loss, so one backward runs with both
    graphs alive (ours back-propagates the first term before the second pass). Same loss value.
    """
    x_t = schedule.q_sample(x0, t, noise)
    loss_std = per_sample(model(x_t, t) - noise).mean()
    with torch.no_grad():
        eps_hat = model(x_t, t)  # the redundant pass
    lam = conservative_lambda(t, schedule.num_timesteps, epoch, lambda_min, lambda_max, ramp_epochs)
    x_rect = rectified_input(schedule, x0, x_t, t, eps_hat, noise, lam)
    loss_rect = per_sample(model(x_rect, t) - noise).mean()
    return alpha * loss_std + (1 - alpha) * loss_rect


NAIVE_COST = Cost(3, 7)  # one forward more than ours, no more backward


# --- one training step, from the loop's building blocks -------------------------------------

@contextmanager
def float32_groupnorm() -> Iterator[None]:
    """nn.GroupNorm's own autocast behaviour (float32 out) while inside, in every UNet of the process: the
    baseline the UNet's GroupNorm (models/unet.py, bf16 out) is benchmarked against."""
    ours = unet.GroupNorm.forward
    unet.GroupNorm.forward = nn.GroupNorm.forward
    try:
        yield
    finally:
        unet.GroupNorm.forward = ours


def loss_params(recipe: Recipe, kind: str) -> dict[str, Any]:
    """The recipe's loss settings for `kind`, and an epoch at which every term is active."""
    lc = recipe.loss.model_copy(update={"kind": kind})
    return {"epoch": lc.start_epoch + lc.ramp_epochs, **lc.params()}


def naive_backward(kind: str, net: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                   **params: Any) -> Stats:
    """backward_loss's call for the naive step: one backward of the summed loss."""
    loss = naive_conservative_loss(net, schedule, x0, t, noise, **params)
    loss.backward()
    return {"loss": loss.detach()}


def make_step(name: str, net: nn.Module, schedule: NoiseSchedule, state: TrainState, recipe: Recipe,
              x0: Tensor, rt: Runtime) -> Callable[[int], None]:
    """step(i) -> None: the training loop's step (train_step) of loss `name` (a kind, or NAIVE) at step i."""
    kind = "dream_conservative" if name == NAIVE else name
    params = loss_params(recipe, kind)
    epoch = params.pop("epoch")
    backward = naive_backward if name == NAIVE else backward_loss

    def step(i: int) -> None:
        state.step = i
        stats, _, grad_norm = train_step(state, net, schedule, recipe, x0, epoch, rt, kind=kind, params=params,
                                         backward=backward)
        if grad_norm is None:
            raise RunError(f"benchmark step {i} went non-finite (loss {float(stats['loss'])}); lower optim.lr with --set")

    return step
