"""The step's schedules, pinned by value: learning-rate warm-up, EMA warm-up, gradient clipping, the
timestep range and the flips. The exact-resume tests compare a run with itself, so a wrong but
deterministic formula passes them; these say what the formula is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamctl.config import OptimConfig, load_recipe
from dreamctl.data.loader import flip_mask
from dreamctl.runtime import Runtime
from dreamctl.training.loop import clip_threshold, ema_decay_at, lr_at, step_noise, update
from dreamctl.training.state import TrainState
from tiny_runs import CPU


def test_learning_rate_warms_up_linearly_to_its_value_at_step_warmup_minus_one():
    cfg = OptimConfig(lr=1e-3, warmup_steps=4)
    # step k (0-based) trains at lr * (k + 1) / warmup: never at lr 0, full lr from the 4th step on
    assert [lr_at(k, cfg) for k in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(0, OptimConfig(lr=1e-3, warmup_steps=0)) == 1e-3


def test_ema_decay_warms_up_as_one_plus_step_over_ten_plus_step_then_caps():
    cfg = OptimConfig(ema_decay=0.99)
    assert ema_decay_at(0, cfg) == pytest.approx(0.1)  # the first average keeps 90% of the trained weights
    assert ema_decay_at(90, cfg) == pytest.approx(0.91)
    assert ema_decay_at(10_000, cfg) == 0.99  # (1 + s) / (10 + s) passes 0.99 at s = 881
    assert ema_decay_at(0, OptimConfig(ema_decay=0.99, ema_warmup=False)) == 0.99


def _state(lr: float = 1.0) -> tuple[TrainState, nn.Linear]:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    ema = nn.Linear(4, 4).requires_grad_(False)
    return TrainState(model, ema, torch.optim.SGD(model.parameters(), lr=lr)), model


def test_update_clips_the_gradient_norm_and_steps_at_this_steps_learning_rate():
    """With SGD the applied step shows both: it is lr_at(step) times the clipped gradient."""
    cfg = OptimConfig(lr=0.5, warmup_steps=2, grad_clip=1.0, ema_warmup=False, ema_decay=0.0)
    state, model = _state()
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # norm 100 * sqrt(20) = 447
    norm = update(state, list(model.parameters()), cfg, step=0, loss=torch.tensor(1.0), rt=CPU)
    assert norm == pytest.approx(100 * 20 ** 0.5)  # the norm before clipping, for the log
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(0.25 * 1.0, rel=1e-5)  # lr_at(0) = 0.5 * 1/2, norm clipped to 1
    assert all(torch.equal(e, p) for e, p in zip(state.ema.parameters(), model.parameters()))  # decay 0: a copy
    assert clip_threshold(OptimConfig(grad_clip=None)) == float("inf")


def test_adamw_takes_the_recipes_betas_and_weight_decay():
    from dreamctl.training.loop import init_state

    recipe = load_recipe("tiny", ["optim.betas=[0.8,0.95]", "optim.weight_decay=0.03", "optim.lr=3e-4"])
    (group,) = init_state(recipe, CPU).optimizer.param_groups
    assert (group["betas"], group["weight_decay"], group["lr"]) == ((0.8, 0.95), 0.03, 3e-4)
    assert type(init_state(recipe, CPU).optimizer) is torch.optim.AdamW


def test_the_ema_moves_a_tenth_of_the_way_to_the_trained_weights_at_decay_0_9():
    cfg = OptimConfig(lr=0.5, warmup_steps=0, grad_clip=None, ema_warmup=False, ema_decay=0.9)
    state, model = _state()
    with torch.no_grad():
        for e in state.ema.parameters():
            e.add_(1.0)  # the EMA apart from the model, so that the average shows
    ema_before = [e.clone() for e in state.ema.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    update(state, list(model.parameters()), cfg, step=5, loss=torch.tensor(1.0), rt=CPU)
    for e, before, p in zip(state.ema.parameters(), ema_before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * before + 0.1 * p.detach())


def test_timesteps_cover_zero_to_T_minus_one():
    """t ~ U{0, ..., T-1}: the noisiest step, T-1, is the one the sampler starts from."""
    recipe = load_recipe("tiny", ["diffusion.num_timesteps=4", "sample.steps=4", "sample.t_start=null",
                                   "train.batch_size=64"])
    t = torch.cat([step_noise(recipe, step, CPU)[0] for step in range(4)])
    assert set(t.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["standard", "input_perturbation"])
def test_every_random_loss_input_is_drawn_for_the_global_batch_and_sliced_per_rank(kind):
    """t, eps and DDPM-IP's xi on two ranks, joined, are one process's draws: the run does not depend
    on the process count (dropout aside), and a resume on another count continues the same run."""
    recipe = load_recipe("tiny", [f"loss.kind={kind}", "train.batch_size=8"])
    one = step_noise(recipe, 3, CPU)
    ranks = [step_noise(recipe, 3, Runtime(torch.device("cpu"), "fp32", rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(one[0], torch.cat([t for t, _, _ in ranks]))
    assert torch.equal(one[1], torch.cat([eps for _, eps, _ in ranks]))
    assert one[2].keys() == ({"xi"} if kind == "input_perturbation" else set())
    for name, drawn in one[2].items():
        assert torch.equal(drawn, torch.cat([extra[name] for _, _, extra in ranks]))
        assert drawn.shape == one[1].shape and not torch.equal(drawn, one[1])  # a draw of its own
    assert not torch.equal(one[1], step_noise(recipe, 4, CPU)[1])


def test_flips_are_drawn_anew_each_epoch():
    """(seed, epoch, batch index): the same batch index in another epoch mirrors other images."""
    masks = [flip_mask(0, epoch, 3, 64) for epoch in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert torch.equal(masks[0], flip_mask(0, 0, 3, 64)) and 16 < int(masks[0].sum()) < 48


def test_a_steps_random_inputs_are_drawn_in_a_fixed_order_from_seed_and_step():
    """t, then eps, then DDPM-IP's xi, from one generator seeded with (seed, step): the order every run so far
    drew them in. A change (another order, another draw between them) would change every run's noise silently,
    and a run resumed across the change would not continue the same run."""
    from dreamctl.runtime import generator

    recipe = load_recipe("tiny", ["loss.kind=input_perturbation", "train.batch_size=8", "train.seed=5"])
    t, eps, extra = step_noise(recipe, 7, CPU)
    g = generator(torch.device("cpu"), 5, 7)
    r, T = recipe.data.resolution, recipe.diffusion.num_timesteps
    assert torch.equal(t, torch.randint(0, T, (8,), generator=g))
    assert torch.equal(eps, torch.randn(8, 3, r, r, generator=g))
    assert torch.equal(extra["xi"], torch.randn(8, 3, r, r, generator=g))


def test_update_refuses_a_non_finite_gradient_under_a_finite_loss():
    """AdamW would write NaN into the weights, the EMA and the next checkpoint (mutation audit)."""
    torch.manual_seed(0)
    model, ema = nn.Linear(4, 4), nn.Linear(4, 4).requires_grad_(False)
    state = TrainState(model, ema, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.weight.grad[0, 0] = float("inf")
    assert update(state, list(model.parameters()), OptimConfig(grad_clip=None), 0, torch.tensor(1.0), CPU) is None
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_dropout_is_reseeded_from_seed_and_step(tmp_path, synthetic_data_dir, monkeypatch):
    """Checkpoints hold no RNG state: each step's dropout draws from (seed, step, rank). Dropping the step would
    give every step the same masks, and resume would stay exact, so only this sees it (mutation audit)."""
    from dreamctl.runtime import mix_seed
    from dreamctl.training import loop
    from tiny_runs import TINY, train

    seeds, real = [], loop.update  # the seed in force through the step's forward passes
    monkeypatch.setattr(loop, "update", lambda *a, **k: seeds.append(torch.initial_seed()) or real(*a, **k))
    assert train(tmp_path / "run", synthetic_data_dir, TINY + ["train.max_steps=3", "model.dropout=0.1"],
                 recipe="tiny") == 0
    seed = load_recipe("tiny").train.seed
    assert seeds == [mix_seed(seed, step, 0) for step in range(3)]


@pytest.mark.parametrize("sets, why", [
    (["train.max_steps=23"], "it ends in epoch 2, before loss.start_epoch 3"),  # 8 steps per epoch: step 23 in epoch 2
    (["loss.alpha=1.0"], "loss.alpha is 1"),
    (["loss.lambda_max=0.0"], "lambda_t is 0 up to its last epoch, 15 (loss.lambda_max 0,"),
    (["loss.start_epoch=0", "train.max_steps=8"], "lambda_t is 0 up to its last epoch, 0 (loss.lambda_max 0.5, the ramp"),
    (["loss.start_epoch=0", "train.max_steps=9"], None),  # step 9 is in epoch 1: ramp 1/ramp_epochs
    (["loss.start_epoch=0", "train.max_steps=8", "loss.lambda_min=0.1"], None),  # lambda_min alone rectifies
    (["loss.start_epoch=0", "train.max_steps=8", "loss.ramp_epochs=0"], None),  # no ramp: full lambda at once
    (["train.max_steps=25"], None),  # its last step (the 25th) is the first of epoch 3
])
def test_a_conservative_run_that_would_rectify_no_step_is_named(sets, why):
    """lambda_t stays 0 (or its term has no weight) for the whole run: the runs were standard DDPM under the
    variant's name, at up to twice the cost, and nothing said so (research review #1)."""
    from dreamctl.training.loop import idle_rectification

    recipe = load_recipe("tiny-conservative", ["train.batch_size=8", "loss.start_epoch=3", "loss.ramp_epochs=2", *sets])
    found = idle_rectification(recipe, 64)
    assert (found is None) if why is None else (why in found and found.startswith("this dream_conservative run"))
    assert idle_rectification(load_recipe("tiny", ["train.max_steps=1"]), 64) is None  # other kinds: nothing to say
