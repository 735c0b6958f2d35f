"""The training loop: one readable train() over a TrainState.

Per step (DDPM Algorithm 1, with the loss kind from the recipe):
    x0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I)  -> back-propagate the loss -> clip -> AdamW -> EMA.
Everything random in a step is a pure function of (seed, step): the batch order and flips
come from the loader's (seed, epoch, batch index) and t, eps (and DDPM-IP's extra noise xi) from
a generator seeded with (seed, step) over the *global* batch, each rank taking its slice. So a
resumed run, or a run on another number of processes, sees the same images, timesteps and noise.
Only dropout comes from the global RNG, reseeded per (seed, step, rank): exact on resume with no
RNG state in the checkpoint, but different between runs on different numbers of processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dreamctl.config import OptimConfig, Recipe
from dreamctl.data.loader import BatchOrder, ImageSet, rank_slice, steps_per_epoch, to_model_input
from dreamctl.diffusion import schedule_for
from dreamctl.diffusion.losses import Stats, SyncContext, backward_loss, conservative_lambda, loss_kind, step_cost
from dreamctl.diffusion.schedule import NoiseSchedule
from dreamctl.errors import RunError
from dreamctl.events import OnEvent, ignore
from dreamctl.runtime import Autocast, Runtime, any_rank, generator, mean_over_ranks, mix_seed
from dreamctl.training.checkpoints import Checkpoint
from dreamctl.training.meter import LossMeter
from dreamctl.training.record import Recorder, Throughput
from dreamctl.training.rundir import RunDir
from dreamctl.training.state import TrainState, init_state


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def ema_decay_at(step: int, cfg: OptimConfig) -> float:
    """EMA decay, warmed up as min(d, (1 + step) / (10 + step)) so early averages forget the init."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, one foreach kernel over all parameters."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def clip_threshold(cfg: OptimConfig) -> float:
    """The gradient-norm clipping threshold; without clipping the norm is still measured for the log."""
    return cfg.grad_clip if cfg.grad_clip is not None else math.inf


def update(state: TrainState, params: list[Tensor], cfg: OptimConfig, step: int, loss: Tensor,
           rt: Runtime) -> Tensor | None:
    """The tail of a step: learning rate, clipping, AdamW, EMA. Returns the gradient norm, or None
    without touching the weights when the loss or a gradient is not finite on any rank."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_threshold(cfg), foreach=True)
    bad = ~torch.isfinite(torch.stack([loss.float(), grad_norm.float()])).all()
    if any_rank(bad, rt):  # every rank stops at the same step; none waits on the others
        return None
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    ema_update(state.ema, state.model, ema_decay_at(step, cfg))
    return grad_norm


def total_steps(recipe: Recipe, num_images: int) -> int:
    steps = recipe.train.epochs * steps_per_epoch(num_images, recipe.train.batch_size)
    return min(steps, recipe.train.max_steps) if recipe.train.max_steps else steps


def train_cost(recipe: Recipe, n: int, done: int = 0) -> tuple[int, int, int]:
    """(steps, images, forward units) still to train over `n` images from step `done` (a backward counting as
    two forwards): what `train --dry-run` and ablate's plan say a run costs."""
    batch, loss = recipe.train.batch_size, recipe.loss
    left, before = steps_left(recipe, n, done)
    early, late = (step_cost(loss.kind, epoch, loss.start_epoch).forward_units for epoch in (0, loss.start_epoch))
    return left, left * batch, batch * (early * before + late * (left - before))


def steps_left(recipe: Recipe, n: int, done: int = 0) -> tuple[int, int]:
    """(steps still to train over `n` images from step `done`, how many of them come before loss.start_epoch):
    a staged loss kind takes standard steps until then."""
    left = max(total_steps(recipe, n) - done, 0)
    return left, min(left, max(recipe.loss.start_epoch * steps_per_epoch(n, recipe.train.batch_size) - done, 0))


def idle_rectification(recipe: Recipe, n: int) -> str | None:
    """Why a dream_conservative run over `n` images would rectify no step (standard DDPM under the variant's
    name), or None: it ends before loss.start_epoch, its term has no weight, or lambda_t is 0 throughout, which
    (rising with t and the epoch) it is when it is 0 at t = T-1 in the run's last epoch."""
    loss = recipe.loss
    if loss.kind != "dream_conservative":
        return None
    last_epoch = (total_steps(recipe, n) - 1) // steps_per_epoch(n, recipe.train.batch_size)
    T = recipe.diffusion.num_timesteps
    largest = conservative_lambda(torch.tensor([T - 1]), T, last_epoch, loss.lambda_min, loss.lambda_max,
                                  loss.ramp_epochs).item()
    if last_epoch < loss.start_epoch:
        why = f"it ends in epoch {last_epoch}, before loss.start_epoch {loss.start_epoch}"
    elif loss.alpha == 1:
        why = "loss.alpha is 1: all weight on the standard term"
    elif largest == 0:
        why = (f"lambda_t is 0 up to its last epoch, {last_epoch} (loss.lambda_max {loss.lambda_max:g}, the ramp "
               f"min(epoch / loss.ramp_epochs, 1) with loss.ramp_epochs {loss.ramp_epochs})")
    else:
        return None
    return f"this dream_conservative run rectifies no step ({why}): it trains as standard DDPM would"


def wrap_for_training(model: nn.Module, recipe: Recipe, rt: Runtime) -> tuple[nn.Module, Callable]:
    """(the module the loss calls, the context that defers DDP's gradient all-reduce)."""
    net = torch.compile(model) if recipe.train.compile else model
    if rt.distributed:
        # the UNet has no buffers (GroupNorm only), so DDP's buffer broadcast has nothing to send
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        return Autocast(net, rt), net.no_sync
    return Autocast(net, rt), nullcontext


def step_noise(recipe: Recipe, step: int, rt: Runtime,
               kind: str | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """t, eps and the loss's other random inputs (DDPM-IP's xi) for this rank's part of global batch
    `step`: a pure function of seed and step, drawn for the whole batch and sliced, so that N processes
    draw what one process draws. `kind` defaults to the recipe's loss kind."""
    b, r, T = recipe.train.batch_size, recipe.data.resolution, recipe.diffusion.num_timesteps
    local = rank_slice(b, rt.rank, rt.world_size)
    g = generator(rt.device, recipe.train.seed, step)
    t = torch.randint(0, T, (b,), generator=g, device=rt.device)[local]
    noise = torch.randn(b, 3, r, r, generator=g, device=rt.device)[local]
    extra = {name: torch.randn(b, 3, r, r, generator=g, device=rt.device)[local]
             for name in loss_kind(kind or recipe.loss.kind).extra_noise}
    return t, noise, extra


def train_step(state: TrainState, net: nn.Module, schedule: NoiseSchedule, recipe: Recipe, x0: Tensor, epoch: int,
               rt: Runtime, *, kind: str, params: dict[str, Any], backward: Callable[..., Stats] = backward_loss,
               defer_sync: SyncContext = nullcontext) -> tuple[Stats, Tensor, Tensor | None]:
    """One step of DDPM Algorithm 1 at `state.step`: t ~ U{0..T-1}, eps ~ N(0, I) for x0; back-propagate the loss
    of `kind`; clip, AdamW, EMA. Returns (stats, t, gradient norm), the norm None when the loss or a gradient is
    not finite on some rank (no step taken). `backward` is backward_loss; the benchmark passes the study's."""
    t, noise, extra = step_noise(recipe, state.step, rt, kind)
    torch.manual_seed(mix_seed(recipe.train.seed, state.step, rt.rank))  # dropout: the one draw that depends on the rank
    stats = backward(kind, net, schedule, x0, t, noise, epoch=epoch, defer_sync=defer_sync, **params, **extra)
    return stats, t, update(state, list(state.model.parameters()), recipe.optim, state.step, stats["loss"], rt)


def due(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic write (log, grid, checkpoint) falls on `step`; the last step always has all."""
    return step % every == 0 or step == last_step


def train(recipe: Recipe, run: RunDir, images: ImageSet, rt: Runtime, *, resume: Checkpoint | None = None,
          on_event: OnEvent = ignore, should_stop: Callable[[], bool] = lambda: False) -> str:
    """Train until the recipe's last step, a stop request or a failure. Returns 'finished' or 'interrupted'.

    Only rank 0 writes files. A non-finite loss raises RunError before the optimizer step,
    so neither the weights nor any checkpoint are poisoned.
    """
    tc = recipe.train
    state = init_state(recipe, rt)
    order = BatchOrder(len(images), tc.batch_size, tc.seed, rt.rank, rt.world_size)
    meter = LossMeter(recipe.diffusion.num_timesteps, rt.device)
    if resume is not None:
        state.restore(resume)
        order.load_state_dict(resume.data_position)
        if resume.meter is not None:  # older checkpoints lack it: the first record is then partial
            meter.load_state_dict(resume.meter, rt)
    schedule = schedule_for(recipe.diffusion)
    net, defer_sync = wrap_for_training(state.model, recipe, rt)
    net.train()
    kind, loss_params = recipe.loss.kind, recipe.loss.params()
    last_step = total_steps(recipe, len(images))
    recorder = Recorder(run, recipe, state, order, meter, rt, on_event, last_step)
    on_event("start", {"step": state.step, "total_steps": last_step, "steps_per_epoch": order.steps})

    # A stop while the checkpoint loaded: it is the state, so nothing to train or write within a scheduler's
    # grace period (a finished run has nothing to train either, and stays finished).
    if resume is not None and state.step < last_step and any_rank(should_stop(), rt):
        return "interrupted"
    speed, mark, status = Throughput(), time.perf_counter(), "finished"
    while state.step < last_step:
        batch = next(order)  # x0 ~ data
        x0 = to_model_input(images[batch.indices].to(rt.device, non_blocking=True),
                            flip=batch.flip if recipe.data.hflip else None)
        stats, t, grad_norm = train_step(state, net, schedule, recipe, x0, batch.epoch, rt, kind=kind,
                                         params=loss_params, defer_sync=defer_sync)
        if grad_norm is None:
            raise non_finite(stats, state.step, batch.epoch, run, recipe, rt)

        meter.add(stats, t)
        state.step += 1
        state.images_seen += tc.batch_size
        speed.add(tc.batch_size)
        now = time.perf_counter()
        state.wall_time_s += now - mark
        mark = now
        on_event("step", {"step": state.step})

        if due(state.step, tc.log_every, last_step):
            recorder.log(batch.epoch, grad_norm, speed.img_per_s())
            speed.reset()  # img/s over each log interval
        with speed.side_work():  # checkpoints and grids do not count against img/s
            # The grid before the checkpoint: a run killed between the two resumes from an earlier
            # checkpoint and draws this grid again; the other way round, it would never be drawn.
            if due(state.step, tc.sample_every, last_step):
                recorder.grid(schedule)
            scheduled = due(state.step, tc.checkpoint_every, last_step)
            if scheduled:
                recorder.checkpoint()
            # Asked after the scheduled writes: a stop that came during them finds this step saved, and
            # does not cost one more step and checkpoint within a scheduler's grace period.
            stop = any_rank(should_stop(), rt)
            if stop and not scheduled:
                recorder.checkpoint(stop=True)
        if stop and state.step < last_step:
            status = "interrupted"
            break
    return status


def non_finite(stats: dict[str, Any], step: int, epoch: int, run: RunDir, recipe: Recipe, rt: Runtime) -> RunError:
    """The error for a step whose loss or gradient is not finite (no step was taken), with the step's loss terms:
    their means over the ranks, as the log gives them (rank 0's own share may be finite)."""
    names = [k for k in stats if k.startswith(("loss", "lambda"))]
    terms = dict(zip(names, mean_over_ranks([float(stats[k]) for k in names], rt)))
    return RunError(f"non-finite loss or gradient at step {step} (epoch {epoch}): {terms}; "
                    f"no step taken and no checkpoint written. "
                    f"Resume from the last checkpoint with a lower learning rate or tighter clipping, e.g. "
                    f"`dreamctl resume {run.root} --set optim.lr={recipe.optim.lr / 2:g}`")
