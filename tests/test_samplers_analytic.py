"""Samplers driven by exact denoisers land on the data distribution and converge at their order."""

import inspect
import math

import numpy as np
import pytest
import torch

from undiffuse import samplers
from undiffuse.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from undiffuse.process import sigmas_karras

NAMES = [n for n in samplers.names() if not samplers.info(n).distilled]  # the ones that solve a denoiser's ODE/SDE
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def steps_for(name: str) -> int:
    """Enough steps that discretisation error is well below the statistical tolerance."""
    info = samplers.info(name)
    return 100 if (info.order or 0) >= 2 and not info.stochastic else 300


def draw(name, denoiser, x, seed):
    g = torch.Generator().manual_seed(seed)  # one generator: batch independence is tested elsewhere
    return samplers.get(name)(denoiser, x, sigmas_karras(steps_for(name), SIGMA_MIN, SIGMA_MAX), generator=g)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """E|A−B|·2 − E|A−A'| − E|B−B'| (Székely & Rizzo 2013): zero iff the distributions agree."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_data(name):
    """N(μ, diag(s²)): mean within 4 standard errors, std within 4 SE (plus 1 % for discretisation)."""
    n = 20_000
    mu, s = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    D = GaussianDenoiser(mu, s)
    g = torch.Generator().manual_seed(1)
    # Start from the exact noised marginal N(μ, s² + σ_max²) so only the sampler is under test.
    x = mu + (s**2 + SIGMA_MAX**2).sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    out = draw(name, D, x, seed=2)
    mean_se, std_se = s / math.sqrt(n), s / math.sqrt(2 * n)
    assert bool(((out.mean(0) - mu).abs() < 4 * mean_se).all()), out.mean(0)
    assert bool(((out.std(0) - s).abs() < 4 * std_se + 0.01 * s).all()), out.std(0)
    assert abs(float(torch.corrcoef(out.T)[0, 1])) < 4 / math.sqrt(n)  # independent coordinates


MIXTURE = GaussianMixtureDenoiser(means=torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]]),
                                  stds=torch.tensor([0.5, 0.8, 0.4]), weights=torch.tensor([0.5, 0.3, 0.2]))
# Energy-distance bound for n = 3000 vs 3000 fresh points, measured with this mixture: two fresh
# samples give 0.0027 on average (max 0.0086 over 30 pairs); moving 5 % of the mass between two
# modes gives 0.031. 0.012 accepts sampling noise and rejects a 5 % mode-weight error.
ENERGY_BOUND = 0.012


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_mixture(name):
    n = 3000
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * SIGMA_MAX
    out = draw(name, MIXTURE, x, seed=4)
    modes = torch.cdist(out, MIXTURE.means).argmin(1)  # modes are > 6 std apart: nearest mean is the mode
    weights = torch.bincount(modes, minlength=3).double() / n
    se = (MIXTURE.weights * (1 - MIXTURE.weights) / n).sqrt()
    assert bool(((weights - MIXTURE.weights).abs() < 3 * se).all()), weights
    fresh, _ = MIXTURE.sample(n, generator=torch.Generator().manual_seed(5))
    assert energy_distance(out, fresh) < ENERGY_BOUND
    for k in range(3):  # each mode keeps its width
        within = out[modes == k] - MIXTURE.means[k]
        assert float(within.std()) == pytest.approx(float(MIXTURE.stds[k]), rel=0.1)


# --------------------------------------------------------------------------- convergence order
# Deterministic solvers, plus the SDE solvers run as ODE solvers (η = 0). The expected global
# order: multistep methods warm up with lower-order steps, which caps the observed order at 3.
ODE_SOLVERS = [(n, {}, samplers.info(n).order) for n in NAMES
               if samplers.info(n).order and not samplers.info(n).stochastic and not samplers.info(n).adaptive]
ODE_SOLVERS += [("dpmpp_2m_sde", {"eta": 0.0}, 2), ("dpmpp_3m_sde", {"eta": 0.0}, 3)]
# The order is the textbook method's: h_max = ∞ keeps every step at full order. By default a step longer than
# samplers.H_MAX in λ is first order; on the 8-step grid the last two are (h = 2.0, 2.9), and taken first order they
# are more accurate here (dpmpp_2m: max error 0.33 instead of 1.25), which flattens the fitted slope below the order.
ODE_SOLVERS = [(n, {**o, "h_max": math.inf} if "h_max" in inspect.signature(samplers.get(n).__wrapped__).parameters
                else o, k) for n, o, k in ODE_SOLVERS]
STEPS = [8, 16, 32, 64]


def error_at_sigma_min(name, opts, denoiser, x, reference, n, norm="max"):
    """Error of x at σ_min (the last grid point before the final x̂0 step) vs the reference."""
    seen = {}
    def keep(i, sigma, xi, x0):
        if i == n - 1:
            seen["x"] = xi.clone()
    samplers.get(name)(denoiser, x, sigmas_karras(n, SIGMA_MIN, SIGMA_MAX), callback=keep, **opts)
    diff = seen["x"] - reference
    return float(diff.abs().max() if norm == "max" else diff.pow(2).mean().sqrt())


def fitted_order(errors):
    return -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


@pytest.mark.parametrize("name, opts, order", ODE_SOLVERS, ids=[f"{n}{o}" for n, o, _ in ODE_SOLVERS])
def test_convergence_order_exact_gaussian_flow(name, opts, order):
    """Against the exact PF-ODE solution of Gaussian data, (x−μ)/√(s²+σ²) = const."""
    D = GaussianDenoiser(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * SIGMA_MAX
    reference = D.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    errors = [error_at_sigma_min(name, opts, D, x, reference, n) for n in STEPS]
    assert fitted_order(errors) > min(order, 3) - 0.25, errors


@pytest.fixture(scope="module")
def mixture_reference():
    """A high-accuracy solve of the mixture's (non-linear) PF-ODE: Heun with 4000 steps."""
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * SIGMA_MAX
    seen = {}
    n = 4000
    def keep(i, sigma, xi, x0):
        if i == n - 1:
            seen["x"] = xi.clone()
    samplers.get("heun")(MIXTURE, x, sigmas_karras(n, SIGMA_MIN, SIGMA_MAX), callback=keep)
    return x, seen["x"]


# On the mixture's non-linear flow (x̂0 switches sharply between modes at small σ) 8–64 steps are
# not yet asymptotic for 3rd-order methods: measured RMS orders are 2.3–2.6 there, 2.0–2.4 for the
# 2nd-order ones and 1.07 for Euler. The thresholds ask each family to show its own order class.
MIXTURE_ORDER_FLOOR = {1: 0.9, 2: 1.8, 3: 2.2, 4: 2.2}


@pytest.mark.parametrize("name, opts, order", ODE_SOLVERS, ids=[f"{n}{o}" for n, o, _ in ODE_SOLVERS])
def test_convergence_order_mixture_flow(name, opts, order, mixture_reference):
    x, reference = mixture_reference
    errors = [error_at_sigma_min(name, opts, MIXTURE, x, reference, n, norm="rms") for n in STEPS]
    assert fitted_order(errors) > MIXTURE_ORDER_FLOOR[order], errors


def test_adaptive_meets_its_tolerance_and_spends_more_for_less():
    D = GaussianDenoiser(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * SIGMA_MAX
    exact = D(D.ode_solution(x, SIGMA_MAX, SIGMA_MIN), torch.tensor(SIGMA_MIN))
    results = []
    for rtol in (1e-2, 1e-3, 1e-4):
        info = {}
        out = samplers.get("adaptive")(D, x, sigmas_karras(10, SIGMA_MIN, SIGMA_MAX), rtol=rtol, atol=rtol / 2,
                                       info=info)
        results.append((float((out - exact).abs().max()), info["nfe"]))
    errors, nfes = zip(*results)
    assert errors[0] > errors[1] > errors[2] and nfes[0] < nfes[1] < nfes[2]
    assert errors[2] < 1e-2  # |x| ≈ 1–5 here: rtol 1e-4 gives a global error below 1e-2
