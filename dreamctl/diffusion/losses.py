"""Training losses: one function per loss kind, each called as (model, schedule, x0, t, noise, *, epoch,
emit, defer_sync, the kind's own parameters), as EDM's losses share one call: a kind ignores what it does not use.

Each loss function returns `(final_term, stats)` and hands any earlier term of its
loss to `emit` as soon as that term is complete. Summing the emitted terms and the
final one gives the loss (`compute_loss`); back-propagating each term as it comes
(`backward_loss`) gives the same gradients while only one autograd graph is alive,
which is what keeps `dream_conservative` at the memory of a standard step.

Notation (README, Training methods): abar = alphas_cumprod[t], a = sqrt(abar), s = sqrt(1 - abar),
x_t = a*x0 + s*eps, eps_hat = model(x_t, t) with the gradient stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dreamctl.diffusion.schedule import NoiseSchedule

Emit = Callable[[Tensor], None]
SyncContext = Callable[[], contextlib.AbstractContextManager]
Stats = dict[str, Any]


def per_sample(diff: Tensor, norm: str = "mse") -> Tensor:
    """Mean squared (or absolute) error over all but the batch dimension."""
    err = diff.square() if norm == "mse" else diff.abs()
    return err.flatten(1).mean(dim=1)


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run with dropout off, then restore the model's own train/eval mode, also on error."""
    was_training = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _no_emit(term: Tensor) -> None:  # the default of the one-term losses, which emit nothing
    raise RuntimeError("a one-term loss emitted a term")


def standard(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
             *, epoch: int = 0, emit: Emit = _no_emit, defer_sync: SyncContext = contextlib.nullcontext
             ) -> tuple[Tensor, Stats]:
    """||eps - model(x_t, t)||^2 (Ho et al. 2020, Algorithm 1)."""
    x_t = schedule.q_sample(x0, t, noise)
    losses = per_sample(model(x_t, t) - noise)
    loss = losses.mean()
    return loss, {"loss_std": loss.detach(), "per_sample": losses.detach()}


def dream_lambda(s: Tensor, p: float) -> Tensor:
    """The adaptive rectification weight lambda = sqrt(1 - abar)**p (Zhou et al. 2024)."""
    return s**p


def dream(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
          *, p: float = 1.0, norm: str = "mse", estimate_eval_mode: bool = True, epoch: int = 0,
          emit: Emit = _no_emit, defer_sync: SyncContext = contextlib.nullcontext) -> tuple[Tensor, Stats]:
    """DREAM (Zhou et al., CVPR 2024; the official code's p_losses), epsilon prediction.

    delta = eps - eps_hat; the model sees x_t + lam*s*delta and is trained towards
    eps + lam*delta. The estimate pass runs without gradient and, by default, in eval
    mode (dropout off) as in the official code; this single term replaces the standard loss.
    """
    x_t = schedule.q_sample(x0, t, noise)
    with torch.no_grad(), eval_mode(model, estimate_eval_mode):
        eps_hat = model(x_t, t)
    s = schedule.sqrt_one_minus_abar(t, x0)
    lam = dream_lambda(s, p)
    delta = noise - eps_hat
    x_dream = x_t + lam * s * delta
    target = noise + lam * delta
    losses = per_sample(model(x_dream, t) - target, norm)
    loss = losses.mean()
    # The estimate pass's plain ||eps - model(x_t, t)||^2 comes free: the one curve comparable with other kinds,
    # when model.dropout is 0 (the default): the pass runs in eval mode, their loss_std with dropout on.
    return loss, {"loss_dream": loss.detach(), "loss_std": per_sample(eps_hat.float() - noise).mean(),
                  "lambda_mean": lam.mean().detach(), "per_sample": losses.detach()}


def conservative_lambda(t: Tensor, num_timesteps: int, epoch: int, lambda_min: float, lambda_max: float,
                        ramp_epochs: int) -> Tensor:
    """lam_t = lam_min + (lam_max - lam_min) * (t/T) * min(epoch/ramp_epochs, 1) (the study's schedule)."""
    ramp = 1.0 if ramp_epochs == 0 else min(epoch / ramp_epochs, 1.0)
    return lambda_min + (lambda_max - lambda_min) * (t.float() / num_timesteps) * ramp


def rectified_input(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, eps_hat: Tensor, noise: Tensor,
                    lam: Tensor) -> Tensor:
    """The study's rectified input x_rect = a*x0_adapt + s*eps, x0_adapt = lam*x0_hat + (1-lam)*x0, where
    x0_hat = clamp(predict_x0(x_t, eps_hat), -1, 1) and lam is per sample."""
    x0_hat = schedule.predict_x0(x_t, t, eps_hat).clamp(-1, 1)
    lam = lam.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return schedule.q_sample(lam * x0_hat + (1 - lam) * x0, t, noise)


def dream_conservative(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                       *, epoch: int, lambda_min: float, lambda_max: float, alpha: float, start_epoch: int,
                       ramp_epochs: int, emit: Emit,
                       defer_sync: SyncContext = contextlib.nullcontext) -> tuple[Tensor, Stats]:
    """The CelebA study's variant (NOT the paper's DREAM; it keeps the plain noise target).

    x0_hat = clamp(predict_x0(x_t, eps_hat), -1, 1); x0_adapt = lam*x0_hat + (1-lam)*x0;
    x_rect = a*x0_adapt + s*eps; loss = alpha*L_std + (1-alpha)*||eps - model(x_rect, t)||^2,
    active from `start_epoch` (0-based). eps_hat is the detached prediction of the first
    pass, so the step costs two forwards, not the study's three. The first term goes to `emit`
    (backward_loss back-propagates it at once, compute_loss adds it up); the second is returned.
    """
    if epoch < start_epoch:
        return standard(model, schedule, x0, t, noise)
    x_t = schedule.q_sample(x0, t, noise)
    with defer_sync():  # DDP: the first term's gradients travel with the second's, in one all-reduce
        eps_pred = model(x_t, t)
        losses_std = per_sample(eps_pred - noise)
        loss_std = losses_std.mean()
        emit(alpha * loss_std)  # in training: backward now, freeing this graph before the second pass

    lam = conservative_lambda(t, schedule.num_timesteps, epoch, lambda_min, lambda_max, ramp_epochs)
    x_rect = rectified_input(schedule, x0, x_t, t, eps_pred.detach(), noise, lam)
    losses_rect = per_sample(model(x_rect, t) - noise)
    loss_rect = losses_rect.mean()
    stats = {"loss_std": loss_std.detach(), "loss_rect": loss_rect.detach(), "lambda_mean": lam.mean(),
             "per_sample": (alpha * losses_std + (1 - alpha) * losses_rect).detach()}
    return (1 - alpha) * loss_rect, stats


def input_perturbation(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                       *, gamma: float = 0.1, xi: Tensor | None = None, epoch: int = 0,
                       emit: Emit = _no_emit, defer_sync: SyncContext = contextlib.nullcontext
                       ) -> tuple[Tensor, Stats]:
    """DDPM-IP (Ning et al., ICML 2023, as the official code): input from eps + gamma*xi, target eps."""
    xi = torch.randn_like(noise) if xi is None else xi
    x_t = schedule.q_sample(x0, t, noise + gamma * xi)
    losses = per_sample(model(x_t, t) - noise)
    loss = losses.mean()
    return loss, {"loss_std": loss.detach(), "per_sample": losses.detach()}


class Cost(NamedTuple):
    """What a training step runs: model forward calls, and forward units with a backward counting as two."""

    forward_calls: int
    forward_units: int


@dataclass(frozen=True)
class Loss:
    """A loss kind: its function and what a training step of it needs and costs."""

    fn: Callable[..., tuple[Tensor, Stats]]
    cost: Cost  # per step
    staged: bool = False  # standard steps before loss.start_epoch (step_cost)
    extra_noise: tuple[str, ...] = ()  # N(0, I) draws of the step beyond eps, drawn after it (training.loop.step_noise)


# dream's estimate pass has no backward; dream_conservative's second pass has (its cost from start_epoch:
# step_cost; the study's naive step is bench.steps.NAIVE_COST).
LOSSES: dict[str, Loss] = {
    "standard": Loss(standard, Cost(1, 3)),
    "dream": Loss(dream, Cost(2, 4)),
    "dream_conservative": Loss(dream_conservative, Cost(2, 6), staged=True),
    "input_perturbation": Loss(input_perturbation, Cost(1, 3), extra_noise=("xi",)),
}


def loss_kind(kind: str) -> Loss:
    if kind not in LOSSES:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[kind]


def compute_loss(kind: str, model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                 **params: Any) -> tuple[Tensor, Stats]:
    """The loss of `kind` as one differentiable scalar, and its per-step stats."""
    terms: list[Tensor] = []
    last, stats = loss_kind(kind).fn(model, schedule, x0, t, noise, emit=terms.append, **params)
    loss = sum(terms, last)
    stats["loss"] = loss.detach()
    return loss, stats


def backward_loss(kind: str, model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                  *, defer_sync: SyncContext = contextlib.nullcontext, **params: Any) -> Stats:
    """Back-propagate the loss of `kind` term by term, so only one graph is alive at a time.

    The gradients equal those of `compute_loss(...)[0].backward()`. The passes of every term
    but the last run under `defer_sync()` (DDP's `no_sync`), so gradients are all-reduced once.
    """
    total = []

    def emit(term: Tensor) -> None:
        term.backward()
        total.append(term.detach())

    last, stats = loss_kind(kind).fn(model, schedule, x0, t, noise, emit=emit, defer_sync=defer_sync, **params)
    last.backward()
    stats["loss"] = sum(total, last.detach())
    return stats


def step_cost(kind: str, epoch: int, start_epoch: int) -> Cost:
    """The cost of a step in `epoch`: a staged kind takes standard steps before `start_epoch`."""
    loss = loss_kind(kind)
    return LOSSES["standard"].cost if loss.staged and epoch < start_epoch else loss.cost
