"""The four loss kinds: reductions to the standard loss, gradients, cost and mode handling."""

import pytest
import torch
from torch import nn

from dreamctl.diffusion import make_schedule
from dreamctl.diffusion.losses import LOSSES, backward_loss, compute_loss, step_cost


class TinyNet(nn.Module):
    """A small convolutional eps-predictor with dropout, counting its forward calls."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)
        self.calls = 0
        self.modes: list[bool] = []

    def forward(self, x, t):
        self.calls += 1
        self.modes.append(self.training)
        h = torch.tanh(self.conv1(x) + (t.float() / 1000)[:, None, None, None])
        return self.conv2(self.drop(h))


class Oracle(nn.Module):
    """Predicts exactly the noise that made x_t (a perfect predictor), plus a zero-valued parameter."""

    def __init__(self, schedule, x0):
        super().__init__()
        self.schedule, self.x0 = schedule, x0
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        return self.schedule.predict_eps(x_t, t, self.x0) + self.w


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(6, 3, 8, 8, generator=g)
    return x0, t, noise


SCHEDULE = make_schedule("cosine", 1000)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_dream_with_lambda_zero_is_standard(batch):
    torch.manual_seed(0)
    net = TinyNet()
    std, _ = compute_loss("standard", net, SCHEDULE, *batch)
    dream, stats = compute_loss("dream", net, SCHEDULE, *batch, p=1e6)  # lambda = s**p -> 0
    assert stats["lambda_mean"] == 0
    torch.testing.assert_close(dream, std, rtol=0, atol=0)


class WrongThenRight(Oracle):
    """Wrong on its first call (DREAM's estimate pass), exact on every later one."""

    def __init__(self, schedule, x0):
        super().__init__(schedule, x0)
        self.calls = 0

    def forward(self, x_t, t):
        self.calls += 1
        return super().forward(x_t, t) + (0.3 if self.calls == 1 else 0.0)


def test_dreams_input_and_target_are_one_noising_of_x0_whatever_the_estimate(batch):
    """x_t + lam*s*delta is x0 noised with eps + lam*delta, DREAM's target: a predictor that knows x0 has loss
    0 on the second pass, whatever the first estimated (delta = -0.3 here). A perfect predictor (delta = 0)
    would pass with any pair of input and target; this one fails if either drops a factor."""
    x0, t, noise = batch
    oracle = WrongThenRight(SCHEDULE, x0.double()).double()
    dream, stats = compute_loss("dream", oracle, SCHEDULE, x0.double(), t, noise.double(), p=1.0)
    assert oracle.calls == 2 and stats["lambda_mean"] > 0.1
    torch.testing.assert_close(dream, torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-12)
    oracle.calls = 0
    std, _ = compute_loss("standard", oracle, SCHEDULE, x0.double(), t, noise.double())  # the first call's error
    assert std.item() == pytest.approx(0.09)


def test_dream_differs_from_standard_for_an_imperfect_model(batch):
    net = TinyNet()
    std, _ = compute_loss("standard", net, SCHEDULE, *batch)
    dream, stats = compute_loss("dream", net, SCHEDULE, *batch, p=1.0)
    assert not torch.allclose(dream, std)
    # What it logs as loss_std, from its estimate pass, is the standard loss: the curve to compare kinds by.
    torch.testing.assert_close(stats["loss_std"], std.detach(), rtol=0, atol=0)


def test_dream_gradient_flows_only_through_second_pass(batch):
    net = TinyNet()
    seen = []
    net.register_forward_hook(lambda m, inp, out: seen.append(out.requires_grad))
    loss, stats = compute_loss("dream", net, SCHEDULE, *batch)
    assert seen == [False, True]  # estimate pass under no_grad, then the graded pass
    assert net.calls == 2


def test_dream_estimate_in_eval_mode_and_mode_restored(batch):
    net = TinyNet(dropout=0.5).train()
    compute_loss("dream", net, SCHEDULE, *batch)
    assert net.modes == [False, True] and net.training
    net.eval()
    net.modes.clear()
    compute_loss("dream", net, SCHEDULE, *batch)
    assert net.modes == [False, False] and not net.training  # an eval-mode caller stays in eval
    net.train()
    net.modes.clear()
    compute_loss("dream", net, SCHEDULE, *batch, estimate_eval_mode=False)
    assert net.modes == [True, True]


def test_mode_restored_when_estimate_pass_fails(batch):
    class Broken(TinyNet):
        def forward(self, x, t):
            raise RuntimeError("boom")

    net = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        compute_loss("dream", net, SCHEDULE, *batch)
    assert net.training


@pytest.mark.parametrize("norm", ["mse", "l1"])
@pytest.mark.parametrize("p", [1.0, 2.5])
def test_dream_is_the_papers_loss_for_an_imperfect_model(batch, norm, p):
    """Written as the paper puts it: the adjusted noise eps' = eps + lam*delta (delta = eps - eps_hat,
    lam = sqrt(1 - abar)**p) makes x_t' = q_sample(x0, t, eps'), and the model is trained towards eps'."""
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in batch)
    torch.manual_seed(0)
    net = TinyNet().double()
    dream, _ = compute_loss("dream", net, SCHEDULE, x0, t, noise, p=p, norm=norm)
    with torch.no_grad():
        eps_hat = net(SCHEDULE.q_sample(x0, t, noise), t)
        lam = SCHEDULE.sqrt_one_minus_abar(t, x0) ** p
        adjusted = noise + lam * (noise - eps_hat)
        diff = net(SCHEDULE.q_sample(x0, t, adjusted), t) - adjusted
        expected = (diff**2 if norm == "mse" else diff.abs()).mean()
    torch.testing.assert_close(dream.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["mse", "l1"])
def test_dreams_logged_loss_std_is_the_plain_mse_whatever_its_norm(batch, norm):
    """loss_std is the curve that compares loss kinds (plots.py): for dream it is ||eps - eps_hat||^2 of the
    estimate pass at x_t, squared error even when DREAM itself trains with the paper's L1."""
    x0, t, noise = batch
    torch.manual_seed(0)
    net = TinyNet()
    loss, stats = compute_loss("dream", net, SCHEDULE, x0, t, noise, p=1.0, norm=norm)
    with torch.no_grad():
        abar = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        eps_hat = net(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t)
        mse, mae = ((eps_hat - noise) ** 2).mean(), (eps_hat - noise).abs().mean()
    assert not torch.isclose(mse, mae, rtol=0.05)  # the two norms are told apart on this batch
    torch.testing.assert_close(stats["loss_std"], mse, rtol=1e-5, atol=1e-6)


CONS = dict(lambda_min=0.0, lambda_max=0.5, alpha=0.7, start_epoch=10, ramp_epochs=20)


def test_conservative_before_start_epoch_is_standard(batch):
    net = TinyNet()
    std, _ = compute_loss("standard", net, SCHEDULE, *batch)
    cons, stats = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=9, **CONS)
    torch.testing.assert_close(cons, std, rtol=0, atol=0)
    assert net.calls == 2  # the standard loss's one pass, besides the call above


def test_conservative_with_zero_lambda_is_standard(batch):
    net = TinyNet()
    std, _ = compute_loss("standard", net, SCHEDULE, *batch)
    cons, _ = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=30, **{**CONS, "lambda_max": 0.0})
    torch.testing.assert_close(cons, std, rtol=1e-6, atol=1e-7)  # x_rect = x_t: both terms equal L_std


def test_conservative_lambda_schedule(batch):
    net = TinyNet()
    x0, t, noise = batch
    _, stats = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=10, **CONS)
    expected = 0.5 * (t.float() / 1000) * (10 / 20)
    torch.testing.assert_close(stats["lambda_mean"], expected.mean())
    assert net.calls == 2
    # lambda_min is not scaled by the ramp: lam_t = lam_min + (lam_max - lam_min) * (t/T) * min(epoch/ramp, 1)
    _, stats = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=15, **{**CONS, "lambda_min": 0.1})
    expected = 0.1 + 0.4 * (t.float() / 1000) * (15 / 20)
    torch.testing.assert_close(stats["lambda_mean"], expected.mean())


def test_conservative_with_no_ramp_rectifies_fully_from_its_first_epoch(batch):
    """ramp_epochs = 0 means no warm-up: lam_t = lam_min + (lam_max - lam_min) * t/T from start_epoch on,
    even at epoch 0 where epoch/ramp_epochs would be 0/0."""
    _, t, _ = batch
    for epoch in (0, 3):
        net = TinyNet()
        _, stats = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=epoch,
                                **{**CONS, "start_epoch": 0, "ramp_epochs": 0, "lambda_min": 0.1})
        expected = sum(0.1 + 0.4 * ti / 1000 for ti in t.tolist()) / len(t)
        assert stats["lambda_mean"].item() == pytest.approx(expected, rel=1e-6)


def test_conservative_is_the_studys_loss_written_out(batch):
    """The study's formula in its own terms, at an epoch inside the ramp: x0_hat from the first pass,
    clamped; x0_adapt = lam*x0_hat + (1-lam)*x0 with lam_t = lam_max*(t/T)*(epoch/ramp);
    x_rect = sqrt(abar)*x0_adapt + sqrt(1-abar)*eps; alpha*L_std + (1-alpha)*||eps - model(x_rect, t)||^2."""
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in batch)
    torch.manual_seed(0)
    net = TinyNet().double()
    loss, _ = compute_loss("dream_conservative", net, SCHEDULE, x0, t, noise, epoch=15, **CONS)
    with torch.no_grad():
        abar = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        eps_hat = net(x_t, t)
        x0_hat = ((x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()).clamp(-1, 1)
        lam = (0.5 * (t.double() / 1000) * (15 / 20)).view(-1, 1, 1, 1)
        x_rect = abar.sqrt() * (lam * x0_hat + (1 - lam) * x0) + (1 - abar).sqrt() * noise
        expected = 0.7 * ((eps_hat - noise) ** 2).mean() + 0.3 * ((net(x_rect, t) - noise) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=0, atol=1e-9)  # lam_t is float32 (t.float())


def test_conservative_training_path_matches_single_graph_gradients(batch):
    torch.manual_seed(1)
    net = TinyNet()
    loss, _ = compute_loss("dream_conservative", net, SCHEDULE, *batch, epoch=15, **CONS)
    loss.backward()
    expected = _grads(net)
    net.zero_grad()
    recorder = _Recorder()
    net.register_forward_hook(lambda m, i, o: recorder.log.append(f"forward deferred={recorder.inside}"))
    stats = backward_loss("dream_conservative", net, SCHEDULE, *batch, epoch=15, defer_sync=lambda: recorder, **CONS)
    for got, want in zip(_grads(net), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats["loss"], loss.detach())
    # DDP's no_sync must cover the first forward *and* its backward; the second pass syncs once
    assert recorder.log == ["enter", "forward deferred=True", "exit", "forward deferred=False"]


class _Recorder:
    """Stands in for DDP's no_sync and records when it is entered and left."""

    def __init__(self):
        self.log, self.inside = [], False

    def __enter__(self):
        self.log.append("enter")
        self.inside = True

    def __exit__(self, *exc):
        self.log.append("exit")
        self.inside = False
        return False


def test_conservative_frees_first_graph_before_second_forward(batch):
    """Only one graph alive: the first term's graph is released before the second forward runs."""
    net = TinyNet()
    events = []
    net.register_forward_hook(lambda m, i, o: events.append("forward"))
    net.conv1.weight.register_hook(lambda g: events.append("backward") or g)
    backward_loss("dream_conservative", net, SCHEDULE, *batch, epoch=15, **CONS)
    assert events == ["forward", "backward", "forward", "backward"]


def test_input_perturbation(batch):
    net = TinyNet()
    x0, t, noise = batch
    std, _ = compute_loss("standard", net, SCHEDULE, *batch)
    ip0, _ = compute_loss("input_perturbation", net, SCHEDULE, *batch, gamma=0.0)
    torch.testing.assert_close(ip0, std, rtol=0, atol=0)
    xi = torch.randn_like(noise)
    ip, stats = compute_loss("input_perturbation", net, SCHEDULE, *batch, gamma=0.1, xi=xi)
    # the target stays eps while the input is built from eps + gamma*xi
    x_t = SCHEDULE.q_sample(x0, t, noise + 0.1 * xi)
    torch.testing.assert_close(ip, ((net(x_t, t) - noise) ** 2).mean())


@pytest.mark.parametrize("kind,calls", [("standard", 1), ("dream", 2), ("dream_conservative", 2),
                                        ("input_perturbation", 1)])
def test_forward_calls_per_step(batch, kind, calls):
    """What a step runs is what Loss.cost (the dry run's and ablate's cost) says it runs."""
    net = TinyNet()
    backward_loss(kind, net, SCHEDULE, *batch, epoch=50, **(CONS if kind == "dream_conservative" else {}))
    assert net.calls == LOSSES[kind].cost[0] == calls


@pytest.mark.parametrize("kind,backwards", [("standard", 1), ("dream", 1), ("dream_conservative", 2),
                                            ("input_perturbation", 1)])
def test_forward_units_per_step_count_a_backward_as_two_forwards(batch, kind, backwards):
    """Loss.cost's forward units (the dry run's and ablate's compute estimate) are the forward calls plus two per
    backward pass through the network: DREAM's estimate pass has none, the conservative variant's second has one."""
    net, passes = TinyNet(), []

    def count_backward(module, args, out):  # a forward whose output a backward pass reaches: its hook fires once
        if out.requires_grad:
            out.register_hook(lambda grad: passes.append(1))

    net.register_forward_hook(count_backward)
    backward_loss(kind, net, SCHEDULE, *batch, epoch=50, **(CONS if kind == "dream_conservative" else {}))
    assert len(passes) == backwards
    assert LOSSES[kind].cost.forward_units == net.calls + 2 * backwards
    cost = LOSSES[kind].cost  # unpacked as (calls, units) by the dry run and bench: the fields in that order
    assert tuple(cost) == (cost.forward_calls, cost.forward_units)


@pytest.mark.parametrize("epoch,calls", [(CONS["start_epoch"] - 1, 1), (CONS["start_epoch"], 2)])
def test_conservative_step_cost_follows_start_epoch(batch, epoch, calls):
    """Before start_epoch the study's variant takes a standard step, as step_cost (ablate's estimate) says."""
    net = TinyNet()
    backward_loss("dream_conservative", net, SCHEDULE, *batch, **{**CONS, "epoch": epoch})
    assert net.calls == step_cost("dream_conservative", epoch, CONS["start_epoch"])[0] == calls
    assert step_cost("dream", 0, CONS["start_epoch"]) == LOSSES["dream"].cost  # no other kind has a start


@pytest.mark.parametrize("kind,params", [
    pytest.param("standard", {}, id="standard"),
    pytest.param("dream", {"p": 1.0}, id="dream"),
    pytest.param("dream", {"p": 1.0, "norm": "l1"}, id="dream-l1"),
    pytest.param("input_perturbation", {"gamma": 0.1}, id="input_perturbation"),
    pytest.param("dream_conservative", {**CONS, "epoch": 15}, id="conservative"),  # both terms, alpha = 0.7
    pytest.param("dream_conservative", {**CONS, "epoch": 5}, id="conservative-before-start"),  # standard loss
])
def test_per_sample_stat_averages_to_the_loss(batch, kind, params):
    """The per-sample losses feed the loss-by-timestep quartiles (training/meter.py): each sample's share of
    the loss that is optimised, so that their mean is that loss, for every kind and every term it has."""
    net = TinyNet()
    loss, stats = compute_loss(kind, net, SCHEDULE, *batch, **params)
    assert stats["per_sample"].shape == (6,) and not stats["per_sample"].requires_grad
    torch.testing.assert_close(stats["per_sample"].mean(), loss.detach(), rtol=1e-6, atol=1e-7)
    stats = backward_loss(kind, TinyNet(), SCHEDULE, *batch, **params)  # the training path too
    torch.testing.assert_close(stats["per_sample"].mean(), stats["loss"], rtol=1e-6, atol=1e-7)


def test_unknown_kind(batch):
    with pytest.raises(ValueError, match="unknown loss kind"):
        compute_loss("nope", TinyNet(), SCHEDULE, *batch)


@pytest.mark.parametrize("norm", ["mse", "l1"])
def test_a_recipes_loss_norm_reaches_the_dream_loss(batch, norm):
    """`loss.norm: l1` in a recipe must give the mean absolute error, not be dropped on the way to compute_loss."""
    from dreamctl.config.load import load_recipe

    recipe = load_recipe("tiny-dream", [f"loss.norm={norm}", "loss.p=2.0"])
    assert recipe.loss.kind == "dream"
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in batch)
    torch.manual_seed(0)
    net = TinyNet().double()
    loss, _ = compute_loss(recipe.loss.kind, net, SCHEDULE, x0, t, noise, **recipe.loss.params())
    with torch.no_grad():  # written out by hand: eps' = eps + lam*(eps - eps_hat), lam = sqrt(1 - abar)**2
        eps_hat = net(SCHEDULE.q_sample(x0, t, noise), t)
        adjusted = noise + SCHEDULE.sqrt_one_minus_abar(t, x0) ** 2 * (noise - eps_hat)
        diff = net(SCHEDULE.q_sample(x0, t, adjusted), t) - adjusted
        l1, mse = diff.abs().mean(), (diff**2).mean()
    assert not torch.isclose(l1, mse)  # the two norms tell apart on this batch
    torch.testing.assert_close(loss.detach(), l1 if norm == "l1" else mse, rtol=0, atol=1e-12)


# --- from the mutation audit (review-tests.md): each fails on a mutant the suite let through ----------------

@pytest.fixture
def ends_batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    t = torch.tensor([0, 1, 500, 980, 998, 999])  # both ends of the schedule, where clamps and caps bite
    noise = torch.randn(6, 3, 8, 8, generator=g)
    return x0, t, noise


def test_conservative_lambda_stops_rising_at_ramp_epochs(ends_batch):
    """Past ramp_epochs lambda_t is (t/T) lambda_max: uncapped, it grew past lambda_max in every long run."""
    _, t, _ = ends_batch
    for epoch in (20, 40):
        _, stats = compute_loss("dream_conservative", TinyNet(), SCHEDULE, *ends_batch, epoch=epoch, **CONS)
        torch.testing.assert_close(stats["lambda_mean"], (0.5 * t.float() / 1000).mean())


def test_dream_lambda_is_s_to_the_p_at_every_timestep(ends_batch):
    _, t, _ = ends_batch
    for p in (1.0, 0.5):
        _, stats = compute_loss("dream", TinyNet(), SCHEDULE, *ends_batch, p=p)
        s = (1 - SCHEDULE.alphas_cumprod[t]).sqrt().float()
        torch.testing.assert_close(stats["lambda_mean"], (s**p).mean(), rtol=1e-6, atol=0)


def test_conservative_gradients_equal_those_of_the_written_out_loss(ends_batch):
    """Both terms carry gradient: the gradient of alpha*L_std + (1-alpha)*L_rect written by hand (x_rect from the
    detached first prediction) equals what backward_loss leaves in .grad, not only the loss value."""
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in ends_batch)
    torch.manual_seed(0)
    net = TinyNet().double()
    backward_loss("dream_conservative", net, SCHEDULE, x0, t, noise, epoch=15, **CONS)
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    abar = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    eps_pred = net(x_t, t)
    x0_hat = ((x_t - (1 - abar).sqrt() * eps_pred.detach()) / abar.sqrt()).clamp(-1, 1)
    lam = (0.5 * (t.double() / 1000) * (15 / 20)).view(-1, 1, 1, 1)
    x_rect = abar.sqrt() * (lam * x0_hat + (1 - lam) * x0) + (1 - abar).sqrt() * noise
    loss = 0.7 * ((eps_pred - noise) ** 2).mean() + 0.3 * ((net(x_rect, t) - noise) ** 2).mean()
    loss.backward()
    for g, want in zip(got, (p.grad for p in net.parameters())):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)
