"""The forward process: schedules, exact maps, q_sample vs chained q_step, posterior, σ grids."""

import math

import pytest
import torch

from undiffuse import process
from undiffuse.errors import UndiffuseError
from undiffuse.process import DiscreteSchedule


def test_linear_schedule_is_ddpm():
    betas = process.betas_linear()
    assert len(betas) == 1000 and betas.dtype == torch.float64
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    assert bool((betas[1:] > betas[:-1]).all())


def test_cosine_schedule_matches_closed_form_alpha_bar():
    T, s = 1000, 0.008
    sched = DiscreteSchedule(process.betas_cosine(T, s=s))
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    # β is clipped at 0.999 only at the very end (Nichol & Dhariwal 2021, §3.2)
    assert torch.allclose(sched.alpha_bars[:-1], expected[:-1], rtol=1e-10)


def test_scaled_linear_is_linear_in_sqrt_beta():
    b = process.betas_scaled_linear(100, 0.00085, 0.012).sqrt()
    assert torch.allclose(b[1:] - b[:-1], (b[1] - b[0]).expand(99), atol=1e-12)


def test_make_betas_errors():
    with pytest.raises(UndiffuseError, match="known: linear, scaled_linear, cosine"):
        process.make_betas("quadratic")
    with pytest.raises(UndiffuseError, match="positive integer"):
        process.make_betas("linear", T=0)


def test_exact_maps_round_trip():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    ab = process.sigma_to_alpha_bar(sigma)
    assert torch.allclose(process.alpha_bar_to_sigma(ab), sigma, rtol=1e-12)
    lam = process.sigma_to_log_snr(sigma)
    assert torch.allclose(process.log_snr_to_sigma(lam), sigma, rtol=1e-12)
    assert torch.allclose(process.alpha_bar_to_log_snr(ab), lam, rtol=1e-9, atol=1e-9)
    assert torch.allclose(process.log_snr_to_alpha_bar(lam), ab, rtol=1e-12)


def test_t_sigma_maps_are_inverse_and_exact_on_integers():
    sched = DiscreteSchedule.from_name("linear")
    t = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(sched.t_to_sigma(t), sched.sigmas, rtol=1e-12)
    assert torch.allclose(sched.sigma_to_t(sched.sigmas), t, atol=1e-9)
    frac = torch.rand(200, dtype=torch.float64) * 999
    assert torch.allclose(sched.sigma_to_t(sched.t_to_sigma(frac)), frac, atol=1e-9)


def test_q_sample_agrees_in_distribution_with_chained_q_step():
    """T chained Markov steps give the closed form N(√ᾱ_t x0, (1-ᾱ_t) I) at every t."""
    sched = DiscreteSchedule.from_name("cosine", T=200)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0
    for t in range(sched.T):
        x = sched.q_step(x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in (0, 20, 100, 199):
            closed = sched.q_sample(x0, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
            ab = float(sched.alpha_bars[t])
            mean_se, var_se = math.sqrt((1 - ab) / n), (1 - ab) * math.sqrt(2 / n)
            for sample in (x, closed):  # both within 4 standard errors of the exact moments
                assert abs(float(sample.mean()) - math.sqrt(ab) * 1.5) < 4 * mean_se
                assert abs(float(sample.var()) - (1 - ab)) < 4 * var_se


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): product of two Gaussians in x_{t-1}."""
    sched = DiscreteSchedule.from_name("linear")
    x0, xt = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for t in (1, 10, 500, 999):
        a, b, ab_prev = sched.alphas[t], sched.betas[t], sched.alpha_bars[t - 1]
        precision = a / b + 1 / (1 - ab_prev)
        mean = (a.sqrt() / b * xt + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
        got_mean, got_var = sched.posterior(xt, x0, t)
        assert torch.allclose(got_mean, mean, rtol=1e-9, atol=1e-12)
        assert torch.allclose(got_var, 1 / precision, rtol=1e-9)
    mean0, var0 = sched.posterior(xt, x0, 0)  # the step back to the data is exact
    assert torch.allclose(mean0, x0) and float(var0) == 0.0


def test_per_sample_t_and_bad_t():
    sched = DiscreteSchedule.from_name("linear", T=10)
    x0 = torch.zeros(3, 2, 2)
    out = sched.q_sample(x0 + 1, torch.tensor([0, 5, 9]), torch.zeros_like(x0))
    assert torch.allclose(out[:, 0, 0], sched.alpha_bars[[0, 5, 9]].sqrt().float())
    with pytest.raises(UndiffuseError, match=r"t must lie in \[0, 9\]"):
        sched.q_sample(x0, 10)
    with pytest.raises(UndiffuseError, match="one entry per sample"):
        sched.q_sample(x0, torch.tensor([1, 2]))


def _timesteps(sched, grid):
    return [int(round(float(t))) for t in sched.sigma_to_t(grid[:-1])]


def test_uniform_t_spacings():
    sched = DiscreteSchedule.from_name("linear")
    assert _timesteps(sched, process.sigmas_uniform_t(sched, 10, "leading")) == list(range(900, -1, -100))
    assert _timesteps(sched, process.sigmas_uniform_t(sched, 10, "trailing")) == list(range(999, 0, -100))
    assert _timesteps(sched, process.sigmas_uniform_t(sched, 4, "linspace")) == [999, 666, 333, 0]
    assert _timesteps(sched, process.sigmas_uniform_t(sched, 10, "leading", offset=1))[0] == 901
    with pytest.raises(UndiffuseError, match="unknown timestep spacing"):
        process.sigmas_uniform_t(sched, 10, "middle")
    with pytest.raises(UndiffuseError, match="cannot take 2000 steps"):
        process.sigmas_uniform_t(sched, 2000)


def test_karras_and_exponential_grids():
    k = process.sigmas_karras(10, 0.002, 80.0)
    assert len(k) == 11 and float(k[0]) == pytest.approx(80) and float(k[-2]) == pytest.approx(0.002)
    assert float(k[-1]) == 0 and bool((k[1:] < k[:-1]).all())
    ramp = k[:-1] ** (1 / 7)  # uniform in σ^{1/ρ}
    assert torch.allclose(ramp[1:] - ramp[:-1], (ramp[1] - ramp[0]).expand(9), atol=1e-12)
    e = process.sigmas_exponential(10, 0.01, 10.0)
    d = e[:-1].log().diff()
    assert torch.allclose(d, d[0].expand(9), atol=1e-12) and float(e[-1]) == 0


def test_user_list_and_named_grids():
    assert process.sigmas_from_list([3.0, 1.0, 0.5]).tolist() == [3.0, 1.0, 0.5, 0.0]
    assert process.sigmas_from_list([3.0, 0.0]).tolist() == [3.0, 0.0]
    sched = DiscreteSchedule.from_name("linear")
    g = process.sigma_grid("karras", 5, schedule=sched)  # the linear chain's σ_max is 157: the grid starts at 80
    assert float(g[0]) == pytest.approx(process.GRID_SIGMA_MAX) and float(g[-2]) == pytest.approx(sched.sigma_min)
    low = DiscreteSchedule.from_name("scaled_linear")     # σ_max 14.6: a chain that ends lower keeps its own end
    assert float(process.sigma_grid("exponential", 5, schedule=low)[0]) == pytest.approx(low.sigma_max)
    with pytest.raises(UndiffuseError, match="known: leading, trailing"):
        process.sigma_grid("cubic", 5, schedule=sched)


@pytest.mark.parametrize("bad, message", [
    ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([2.0, 1.0, 0.5], None),  # a missing final 0 is appended by sigmas_from_list
    ([2.0, 2.0, 0.0], "strictly decreasing"),
    ([2.0, float("nan"), 0.0], "inf or NaN"),
    ([[2.0, 0.0]], "1-D"),
])
def test_check_sigmas_errors(bad, message):
    if message is None:
        assert process.sigmas_from_list(bad).tolist()[-1] == 0.0
        with pytest.raises(UndiffuseError, match="must end at 0"):
            process.check_sigmas(bad)
    else:
        with pytest.raises(UndiffuseError, match=message):
            process.check_sigmas(bad)


def test_grid_argument_errors():
    with pytest.raises(UndiffuseError, match="0 < σ_min < σ_max"):
        process.sigmas_karras(10, 5.0, 1.0)
    with pytest.raises(UndiffuseError, match="positive integer"):
        process.sigmas_exponential(-3, 0.1, 1.0)


def test_training_densities():
    g = torch.Generator().manual_seed(0)
    sigma = process.sample_sigma_lognormal(50_000, -1.2, 1.2, generator=g)
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(sigma.log().std()) == pytest.approx(1.2, abs=0.03)
    t = process.sample_t_uniform(DiscreteSchedule.from_name("linear", T=10), 10_000, generator=g)
    assert int(t.min()) == 0 and int(t.max()) == 9
