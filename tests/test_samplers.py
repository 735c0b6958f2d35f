"""Schedules and samplers: closed forms, DDIM(eta=1) = DDPM, and exact Gaussian recovery."""

import math

import pytest
import torch

from dreamctl.config import SampleConfig
from dreamctl.diffusion import make_schedule
from dreamctl.diffusion.samplers import ddim_step, sample, timesteps
from dreamctl.generate import generate, to_uint8


def test_cosine_schedule_matches_closed_form():
    s = make_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alphas_cumprod.dtype == torch.float64
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999


def test_linear_schedule_and_q_sample_inverse():
    s = make_schedule("linear", 1000, 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    x0, eps = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = s.q_sample(x0, t, eps)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)  # DDPM eq. 4 from the table itself: the inverses below would
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)  # hold for any pair of tables
    torch.testing.assert_close(s.predict_x0(x_t, t, eps), x0)
    torch.testing.assert_close(s.predict_eps(x_t, t, x0), eps)


def test_linear_schedule_is_ddpms_linspace_of_betas():
    """DDPM's betas rise linearly from 1e-4 to 0.02 (Ho et al. 2020, section 4): every interior beta, not
    only the ends, since a "scaled linear" schedule (linspace of sqrt(beta), squared) has the same ends."""
    s = make_schedule("linear", 1000, 1e-4, 0.02)
    expected = torch.tensor([1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)], dtype=torch.float64)
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    torch.testing.assert_close(s.betas, expected, rtol=1e-12, atol=0)
    assert s.betas[333].item() == pytest.approx(1e-4 + 0.0199 / 3, rel=1e-12)  # a third of the way up


def test_cosine_schedules_last_beta_is_clamped_at_0_999():
    """abar(T) = f(T)/f(0) is ~0 in the cosine schedule, so its last beta would be ~1 (a singular last step):
    Nichol & Dhariwal clip betas at 0.999. The clamp bites exactly there; the beta before it is the
    closed form, 1 - f(999)/f(998), about 3/4 (f ~ ((T - t)/(1 + s))^2 near the end)."""
    s = make_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert 1 - f(1000) / f(999) > 0.999999  # the unclamped value: the clamp is what sets the last beta
    assert s.betas[-1].item() == 0.999
    assert s.betas[-2].item() == pytest.approx(1 - f(999) / f(998), rel=1e-9)
    assert s.betas[-2].item() < 0.999  # only the last one is clamped


def _bayes_posterior(s, x0, x_t, t):
    """q(x_{t-1} | x_t, x0) by direct Gaussian conditioning: x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev),
    x_t | x_{t-1} ~ N(sqrt(1 - beta) x_{t-1}, beta). Written out here, apart from the sampler's DDIM form."""
    abar_prev, beta = s.alphas_cumprod[t - 1], s.betas[t]
    prior_m, prior_v = abar_prev.sqrt() * x0, 1 - abar_prev
    post_v = 1 / (1 / prior_v + (1 - beta) / beta)
    post_m = post_v * (prior_m / prior_v + (1 - beta).sqrt() * x_t / beta)
    return post_m, post_v


def test_ddim_step_with_eta_1_is_the_ddpm_posterior():
    """DDIM's eta = 1 from t to t - 1 draws from q(x_{t-1} | x_t, x0_hat) (DDPM eq. 6-7): its mean with
    zero noise, its standard deviation as the coefficient of the noise."""
    s = make_schedule("cosine", 100)
    x0, x_t = torch.tensor([[0.3, -0.9]], dtype=torch.float64), torch.tensor([[-0.5, 1.2]], dtype=torch.float64)
    for t in (1, 37, 99):
        eps = s.predict_eps(x_t, torch.tensor([t]), x0)  # the eps that makes x0 the prediction
        mean, _ = ddim_step(s, x_t, t, t - 1, eps, eta=1.0, noise=torch.zeros_like(x_t))
        plus_one, _ = ddim_step(s, x_t, t, t - 1, eps, eta=1.0, noise=torch.ones_like(x_t))
        post_m, post_v = _bayes_posterior(s, x0, x_t, t)
        torch.testing.assert_close(mean, post_m, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(plus_one - mean, post_v.sqrt().expand_as(x_t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eta", [0.5, 0.3])
def test_ddim_step_noise_scale_is_eta_times_the_posterior_std(eta):
    """DDIM eq. 16: sigma_t(eta) = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev), linear
    in eta, and the direction to x_t keeps the rest of the variance: x_prev = sqrt(abar_prev) x0_hat
    + sqrt(1 - abar_prev - sigma^2) eps + sigma z (eq. 12). Checked on a skipping step (t = 60 -> 40),
    where neither eta = 0 nor eta = 1 can tell eta from eta**2."""
    s = make_schedule("cosine", 100)
    abar, abar_prev = s.alphas_cumprod[60].item(), s.alphas_cumprod[40].item()
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
    x0, x_t = torch.tensor([[0.3, -0.9]], dtype=torch.float64), torch.tensor([[-0.5, 1.2]], dtype=torch.float64)
    eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)  # the eps that makes x0 the prediction
    mean, x0_hat = ddim_step(s, x_t, 60, 40, eps, eta=eta, noise=torch.zeros_like(x_t))
    plus_one, _ = ddim_step(s, x_t, 60, 40, eps, eta=eta, noise=torch.ones_like(x_t))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plus_one - mean, torch.full_like(x_t, sigma), rtol=1e-9, atol=1e-12)
    expected_mean = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - sigma**2) * eps
    torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-12)


def test_timesteps_from_t_start_round_to_the_nearest_step():
    """With t_start, t_i = round(i * t_start / (steps - 1)): 950/6 = 158.33 apart, so 316.67 -> 317 and
    791.67 -> 792 (truncating would give 316 and 791, a bias towards smaller t)."""
    assert timesteps(1000, 7, t_start=950) == [950, 792, 633, 475, 317, 158, 0]
    assert timesteps(100, 4, t_start=10) == [10, 7, 3, 0]  # 10/3 apart: 3.33 -> 3, 6.67 -> 7


def test_timesteps():
    assert timesteps(1000, 50)[:2] == [980, 960] and timesteps(1000, 50)[-1] == 0
    assert len(timesteps(1000, 50)) == 50
    assert timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = timesteps(1000, 10, t_start=950)
    assert ts[0] == 950 and ts[-1] == 0 and len(ts) == 10
    assert timesteps(1000, 1, t_start=999) == [999]
    assert timesteps(1000, 11, t_start=10) == list(range(10, -1, -1))
    with pytest.raises(ValueError):
        timesteps(10, 11)
    with pytest.raises(ValueError, match="t_start"):
        timesteps(1000, 50, t_start=10)  # fewer distinct timesteps than steps: refused, not shortened


class GaussianOracle:
    """The exact eps-predictor E[eps | x_t] for data x0 ~ N(mu, sigma^2) per dimension."""

    def __init__(self, schedule, mu, sigma):
        self.s, self.mu, self.sigma = schedule, mu, sigma

    def __call__(self, x_t, t):
        a = self.s.sqrt_abar(t, x_t)
        s = self.s.sqrt_one_minus_abar(t, x_t)
        return s * (x_t - a * self.mu) / (a**2 * self.sigma**2 + s**2)


def _generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddpm_sampling_is_ancestral_sampling_from_the_posterior(clip_x0):
    """sample(method='ddpm'), i.e. DDIM(eta=1) on all T steps, against DDPM's ancestral loop written out:
    x0_hat from the model (clipped or not), then x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), the same noise draws."""
    schedule = make_schedule("cosine", 100)
    oracle = GaussianOracle(schedule, 0.5, 0.3)
    noise = torch.randn(5, 2, 3, 3, dtype=torch.float64) * 2  # wide enough that clipping bites
    ddpm = sample(oracle, schedule, noise, steps=100, method="ddpm", generator=_generators(5), clip_x0=clip_x0)
    x, gens = noise, _generators(5)
    for t in range(99, -1, -1):
        tt = torch.full((5,), t)
        x0_hat = schedule.predict_x0(x, tt, oracle(x, tt))
        x0_hat = x0_hat.clamp(-1, 1) if clip_x0 else x0_hat
        if t == 0:
            x = x0_hat
            break
        mean, var = _bayes_posterior(schedule, x0_hat, x, t)
        x = mean + var.sqrt() * torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32)
                                             for g in gens]).double()
    torch.testing.assert_close(ddpm, x, rtol=1e-7, atol=1e-9)
    ddim0 = sample(oracle, schedule, noise, steps=100, eta=0.0, generator=_generators(5), clip_x0=clip_x0)
    assert not torch.allclose(ddim0, ddpm)  # the noise draws matter: the equality above is not trivial


@pytest.mark.parametrize("method,eta", [("ddim", 0.0), ("ddpm", 1.0), ("ddim", 0.5)])
def test_sampler_reproduces_gaussian_data(method, eta):
    """With all T steps of DDPM's schedule the samplers recover N(mu, sigma^2); fewer DDIM
    steps shrink the variance (a discretisation error), which is why this uses all of them."""
    schedule, steps = make_schedule("linear", 1000), 1000
    mu, sigma = 0.4, 0.25
    oracle = GaussianOracle(schedule, mu, sigma)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 1, 2, 2, generator=g, dtype=torch.float64)
    x0 = sample(oracle, schedule, noise, steps=steps, eta=eta, method=method, generator=g)
    assert x0.mean().item() == pytest.approx(mu, abs=0.01)
    assert x0.std().item() == pytest.approx(sigma, rel=0.03)


def test_per_image_seeds_do_not_depend_on_batch():
    schedule = make_schedule("cosine", 50)
    oracle = GaussianOracle(schedule, 0.0, 0.5)
    noise = torch.randn(6, 3, 4, 4)
    full = sample(oracle, schedule, noise, steps=10, eta=1.0, generator=_generators(6))
    tail = sample(oracle, schedule, noise[3:], steps=10, eta=1.0, generator=_generators(3, seed=3))
    torch.testing.assert_close(full[3:], tail)


def test_callback_and_clipping():
    schedule = make_schedule("cosine", 50)
    seen = []
    x = sample(lambda x, t: -3 * x, schedule, torch.randn(2, 3, 4, 4), steps=5, clip_x0=True,
               callback=lambda i, t, x_t, x0: seen.append((i, t, x0.clone())))
    assert [s[1] for s in seen] == timesteps(50, 5)
    assert all(x0.abs().max() <= 1.0 for *_, x0 in seen)
    torch.testing.assert_close(x, seen[-1][2], rtol=0, atol=0)  # the last step lands on its x0 estimate
    unclipped = []
    sample(lambda x, t: -3 * x, schedule, torch.randn(2, 3, 4, 4), steps=5,
           callback=lambda i, t, x_t, x0: unclipped.append(x0.abs().max().item()))
    assert max(unclipped) > 1.5  # this model's x0 estimates do leave [-1, 1]: the clamp above was at work


def test_ddpm_requires_all_steps_and_eta_1():
    """DDPM is DDIM(eta=1) on all T steps: another eta is refused, not silently replaced by 1."""
    schedule = make_schedule("cosine", 50)
    with pytest.raises(ValueError, match="all T"):
        sample(lambda x, t: x, schedule, torch.randn(1, 3, 4, 4), steps=10, method="ddpm")
    with pytest.raises(ValueError, match="eta 1"):
        sample(lambda x, t: x, schedule, torch.randn(1, 3, 4, 4), steps=50, eta=0.0, method="ddpm")


def test_a_compiled_network_sees_one_batch_shape_and_the_same_images(tmp_path):
    """sample_to_folder pads a short last batch for a compiled network (a new shape would compile again)."""
    from dreamctl.config import SampleConfig
    from dreamctl.inference import InferenceModel
    from dreamctl.runtime import Runtime
    from dreamctl.sample_folder import read_samples, sample_to_folder

    schedule = make_schedule("cosine", 50)
    oracle = GaussianOracle(schedule, 0.0, 0.5)
    seen: list[int] = []

    def net(x, t):
        seen.append(x.shape[0])
        return oracle(x, t)

    def draw(compile: bool):
        cfg = SampleConfig(steps=5, eta=1.0, batch_size=4, compile=compile)
        m = InferenceModel(net, schedule, cfg, 0, tmp_path / "step-0.pt", 4, "run", "oracle")
        folder = tmp_path / f"compile-{compile}"
        sample_to_folder(m, folder, 6, seed=0, rt=Runtime(torch.device("cpu"), "fp32"))
        return read_samples(folder, 6, 4)

    padded = draw(compile=True)
    assert set(seen) == {4}
    seen.clear()
    plain = draw(compile=False)
    assert set(seen) == {4, 2}
    assert (padded == plain).all()  # the copies are dropped; each image keeps its own seed


def test_to_uint8_maps_minus_one_to_one_onto_0_to_255_rounding_to_nearest():
    """[-1, 1] -> (x + 1) * 127.5, rounded to the nearest level (torch.round: halves to even, so 0 -> 127.5
    -> 128), out of range clamped, NCHW -> NHWC. -0.5 -> 63.75 must give 64, not a truncated 63; 1 must
    reach 255 (a factor of 127 would stop at 254)."""
    x = torch.tensor([-1.0, 0.0, 1.0, -0.5, 0.25, -3.0, 1.7, 0.999]).view(1, 1, 1, 8)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 8, 1)
    # 0.25 -> 159.375 -> 159; 0.999 -> 254.8725 -> 255
    assert out.flatten().tolist() == [0, 128, 255, 64, 159, 0, 255, 255]


def test_generate_draws_with_the_configured_eta():
    """generate() (behind `sample`, `evaluate`, the progress grids) must use the recipe's eta: with the same
    seeds, DDIM eta = 1 gives other images than eta = 0, and the same as the sampler called directly with
    eta = 1 and one generator per seed (its initial noise first, then every step's noise)."""
    schedule = make_schedule("cosine", 50)
    oracle = GaussianOracle(schedule, 0.0, 0.5)
    seeds = [3, 11]
    cpu = torch.device("cpu")
    draw = lambda eta: generate(oracle, schedule, seeds, image_size=4, device=cpu,  # noqa: E731
                                cfg=SampleConfig(steps=5, eta=eta, batch_size=2))
    stochastic, deterministic = draw(1.0), draw(0.0)
    assert not torch.equal(stochastic, deterministic)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x_T = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
    x0 = sample(oracle, schedule, x_T, steps=5, eta=1.0, generator=gens)
    expected = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(stochastic, expected)


def test_an_images_initial_noise_is_its_seeds_first_draw():
    """x_T of image i is the first float32 N(0, I) draw of a CPU generator seeded with its seed: the rule every
    sample folder so far was drawn by (another would change every image a seed names)."""
    from dreamctl.generate import initial_noise, seed_generators

    expected = torch.stack([torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (7, 11)])
    assert torch.equal(initial_noise(seed_generators([7, 11]), 8), expected)


def test_per_image_noise_needs_one_generator_per_image():
    """A list of generators gives row i its own noise: a list shorter than the batch would broadcast one
    generator's draw over every image (the same noise for all) instead of failing."""
    from dreamctl.diffusion.samplers import randn_like

    x = torch.zeros(3, 2, 4, 4)
    for count in (1, 2, 4):
        with pytest.raises(ValueError, match=f"got {count} generators for a batch of 3"):
            randn_like(x, [torch.Generator().manual_seed(i) for i in range(count)])
    rows = randn_like(x, [torch.Generator().manual_seed(i) for i in range(3)])
    assert rows.shape == x.shape and not torch.equal(rows[0], rows[1])
