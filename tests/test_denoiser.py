"""Preconditioning wrappers and the ε / x0 / v / score conversions."""

import pytest
import torch

from undiffuse import denoiser as dn
from undiffuse.denoiser import ClampedDenoiser, EDMDenoiser, VPDenoiser
from undiffuse.errors import UndiffuseError
from undiffuse.process import DiscreteSchedule

torch.manual_seed(0)
X0 = torch.randn(6, 3, 4, dtype=torch.float64)
EPS = torch.randn(6, 3, 4, dtype=torch.float64)
SIGMA = torch.logspace(-2, 1.5, 6, dtype=torch.float64)
X = X0 + SIGMA[:, None, None] * EPS


def test_eps_round_trip():
    x0 = dn.eps_to_x0(X, SIGMA, EPS)
    assert torch.allclose(x0, X0, atol=1e-12)
    assert torch.allclose(dn.x0_to_eps(X, SIGMA, x0), EPS, atol=1e-9)


def test_v_round_trip_and_definition():
    v = dn.x0_to_v(X, SIGMA, X0)
    alpha = (1 + SIGMA**2).rsqrt()[:, None, None]
    assert torch.allclose(v, alpha * EPS - SIGMA[:, None, None] * alpha * X0, atol=1e-10)  # v = α ε − σ_VP x0
    assert torch.allclose(dn.v_to_x0(X, SIGMA, v), X0, atol=1e-10)


def test_score_round_trip():
    score = dn.x0_to_score(X, SIGMA, X0)
    assert torch.allclose(score, -EPS / SIGMA[:, None, None], atol=1e-9)  # ∇ log p = −ε/σ
    assert torch.allclose(dn.score_to_x0(X, SIGMA, score), X0, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_to_x0_from_x0_are_inverse(prediction):
    target = dn.from_x0(prediction, X, SIGMA, X0)
    assert torch.allclose(dn.to_x0(prediction, X, SIGMA, target), X0, atol=1e-10)


def test_unknown_prediction():
    with pytest.raises(UndiffuseError, match="known: eps, x0, v"):
        dn.to_x0("score", X, SIGMA, X0)
    with pytest.raises(UndiffuseError, match="unknown prediction"):
        VPDenoiser(torch.nn.Identity(), prediction="mu")


class Oracle(torch.nn.Module):
    """Returns the exact target for the (x0, ε) pair behind its input, and records what it saw."""

    def __init__(self, prediction, x, sigma):
        super().__init__()
        self.prediction, self.x, self.sigma = prediction, x, sigma

    def forward(self, z, t, cond=None):
        self.seen = (z, t)
        return dn.from_x0(self.prediction, self.x, self.sigma, X0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_denoiser_inputs_and_output(prediction):
    """The net sees the DDPM sample x_t = √ᾱ x0 + √(1−ᾱ) ε and its timestep t; D returns x0."""
    sched = DiscreteSchedule.from_name("linear")
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    sigma = sched.sigmas[t]
    x = X0 + sigma[:, None, None] * EPS
    net = Oracle(prediction, x, sigma)
    out = VPDenoiser(net, prediction, schedule=sched)(x, sigma)
    z, t_seen = net.seen
    assert torch.allclose(z, sched.q_sample(X0, t, EPS), atol=1e-10)
    assert torch.allclose(t_seen.double(), t.double(), atol=1e-4)
    assert torch.allclose(out, X0, atol=1e-9)


def test_vp_denoiser_continuous_noise_cond():
    net = Oracle("eps", X, SIGMA)
    D = VPDenoiser(net, "eps")
    assert torch.allclose(D(X, SIGMA), X0, atol=1e-10)
    assert torch.allclose(net.seen[1], SIGMA.log() / 4)


def test_edm_preconditioning():
    """EDM Table 1: with F ≡ 0, D = c_skip x; D → x as σ → 0; the F target gives back x0."""
    sd = 0.5
    zero = EDMDenoiser(lambda x, c, cond=None: torch.zeros_like(x), sigma_data=sd)
    c_skip = (sd**2 / (SIGMA**2 + sd**2))[:, None, None]
    assert torch.allclose(zero(X, SIGMA), c_skip * X)
    tiny = torch.full((6,), 1e-6, dtype=torch.float64)
    assert torch.allclose(zero(X, tiny), X, atol=1e-10)
    c_out = (SIGMA * sd / (SIGMA**2 + sd**2).sqrt())[:, None, None]
    target = (X0 - c_skip * X) / c_out
    exact = EDMDenoiser(lambda x, c, cond=None: target, sigma_data=sd)
    assert torch.allclose(exact(X, SIGMA), X0, atol=1e-10)


def test_clamped_denoiser():
    D = ClampedDenoiser(lambda x, s, cond=None: 3 * x)
    assert float(D(X, SIGMA).abs().max()) <= 1.0
