"""Rectified flow as one more parameterisation: conversions, training density, a toy run, diffusers' Euler.

x_t = (1-t) x0 + t ε with a velocity network v = ε - x0 is the σ-form x = x_t/(1-t) = x0 + σ ε with
σ = t/(1-t), so a flow model is one more denoiser wrapper and every sampler runs on it unchanged.
"""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from torch import Tensor, nn

from undiffuse import denoiser as dn
from undiffuse import process, samplers
from undiffuse.config import Config, load_config
from undiffuse.data import toy_dataset
from undiffuse.denoiser import FlowDenoiser
from undiffuse.ema import EMA
from undiffuse.errors import UndiffuseError
from undiffuse.evaluation import energy_distance
from undiffuse.losses import denoising_loss
from undiffuse.models import build_denoiser, build_net, config_sigmas, sigma_range, training_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64

g = torch.Generator().manual_seed(0)
X0 = torch.randn(6, 3, 4, generator=g, dtype=F64)
EPS = torch.randn(6, 3, 4, generator=g, dtype=F64)
SIGMA = torch.logspace(-3, 3, 6, dtype=F64)                        # t from 0.001 to 0.999
T = (SIGMA / (1 + SIGMA))[:, None, None]
X = X0 + SIGMA[:, None, None] * EPS


def flow_config(*overrides: str) -> Config:
    return load_config(None, ["diffusion.parameterization='flow'", *overrides])


# --------------------------------------------------------------------------- (1) conversions
def test_v_x0_eps_round_trips():
    v = dn.x0_to_flow(X, SIGMA, X0)
    assert torch.allclose(v, EPS - X0, atol=1e-9)                      # v = ε - x0
    x_t = X / (1 + SIGMA[:, None, None])
    assert torch.allclose(x_t, (1 - T) * X0 + T * EPS, atol=1e-12)    # the flow sample x_t = (1-t) x0 + t ε
    assert torch.allclose(dn.flow_to_x0(X, SIGMA, v), X0, atol=1e-12)
    assert torch.allclose(dn.x0_to_eps(X, SIGMA, dn.flow_to_x0(X, SIGMA, v)), EPS, atol=1e-9)
    assert torch.allclose(dn.to_x0("flow", X, SIGMA, dn.from_x0("flow", X, SIGMA, X0)), X0, atol=1e-12)


def test_flow_denoiser_shows_the_net_x_t_and_1000_t():
    seen = {}

    def oracle(z, t, cond=None):                                       # the exact velocity
        seen["z"], seen["t"] = z, t
        return EPS - X0

    assert torch.allclose(FlowDenoiser(oracle)(X, SIGMA), X0, atol=1e-12)
    assert torch.allclose(seen["z"], (1 - T) * X0 + T * EPS, atol=1e-12)
    assert torch.allclose(seen["t"], 1000 * T.flatten(), atol=1e-9)


def test_velocity_loss_and_min_snr():
    """The native loss is the velocity MSE; min-SNR-γ is min(SNR, γ)·t² on it (SNR = (1-t)²/t² = 1/σ²)."""
    class Linear(nn.Module):
        def forward(self, z, t, cond=None):
            self.out = 0.3 * z + t[:, None, None] / 1000
            return self.out

    net = Linear()
    v = EPS - X0
    loss = denoising_loss(FlowDenoiser(net), X0, SIGMA, noise=EPS)
    assert torch.allclose(loss, (net.out - v).pow(2).mean(), rtol=1e-9)
    loss = denoising_loss(FlowDenoiser(net), X0, SIGMA, noise=EPS, min_snr_gamma=5.0)
    per_sample = (net.out - v).pow(2).flatten(1).mean(1)
    weight = torch.clamp(SIGMA**-2, max=5.0) * T.flatten() ** 2
    assert torch.allclose(loss, (weight * per_sample).mean(), rtol=1e-9)


def test_logit_normal_density_and_shift():
    """t = sigmoid(u), u ~ N(m, s²) is ln σ ~ N(m, s²); SD3's shift multiplies σ."""
    cfg = flow_config("diffusion.flow_logit_mean=0.5", "diffusion.flow_logit_std=0.8", "diffusion.flow_shift=3.0")
    sigma = training_sigmas(cfg, None, 20_000, torch.Generator().manual_seed(0))
    u = (sigma / 3.0).log()
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.std()) - 0.8) < 0.02
    t = torch.rand(7, dtype=F64)
    shifted = process.flow_shift(t, 3.0)
    assert torch.allclose(process.flow_t_to_sigma(shifted), 3.0 * process.flow_t_to_sigma(t), rtol=1e-12)
    assert torch.allclose(process.flow_sigma_to_t(process.flow_t_to_sigma(t)), t, atol=1e-15)


def test_flow_grids_span_the_shifted_range():
    cfg = flow_config("diffusion.flow_shift=3.0")
    lo, hi = sigma_range(cfg)
    assert lo == pytest.approx(3e-3 / 0.999) and hi == pytest.approx(3 * 99)
    for grid in ("karras", "exponential", "flow"):
        s = config_sigmas(cfg, 8, grid)
        assert float(s[0]) == pytest.approx(hi) and float(s[-2]) == pytest.approx(lo) and float(s[-1]) == 0
    u = (lambda s: s / (s + 3.0))(config_sigmas(cfg, 8, "flow")[:-1])  # the unshifted t: uniform
    assert torch.allclose(u.diff(), u.diff()[0].expand(7), atol=1e-12)


# --------------------------------------------------------------------------- (2) a toy run
def test_a_short_flow_run_learns_eight_gaussians():
    """The toy test of tests/test_toy.py (400 steps, the same distance bound) with a flow MLP."""
    cfg = flow_config("model.backbone='mlp'", "model.channels=64", "model.mlp_depth=2", "sample.grid='flow'")
    torch.manual_seed(1)
    denoiser = build_denoiser(cfg, build_net(cfg, 0, dim=2))
    ema, opt = EMA(denoiser, 0.99), torch.optim.AdamW(denoiser.parameters(), lr=3e-3)
    data, gen = toy_dataset("eight_gaussians", 100_000, seed=1), torch.Generator().manual_seed(1)
    losses = []
    for _ in range(400):
        x0 = data[torch.randint(0, len(data), (256,), generator=gen)]
        sigma = training_sigmas(cfg, None, 256, gen).float()
        loss = denoising_loss(denoiser, x0, sigma, noise=torch.randn(x0.shape, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(denoiser)
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.9 * sum(losses[:20]) / 20      # ≈ 2.0 → 1.56

    sigmas = config_sigmas(cfg, 20)
    noise = samplers.randn((1000, 2), torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = samplers.get("dpmpp_2m")(ema.model.eval(), noise * float(sigmas[0]), sigmas)
    ref = toy_dataset("eight_gaussians", 1000, seed=99)
    learned, untrained = energy_distance(out, ref), energy_distance(noise, ref)
    assert learned < 0.3 * untrained, (learned, untrained)             # measured ≈ 0.23 (0.19-0.22 at other seeds)


# --------------------------------------------------------------------------- (3) diffusers' FlowMatchEuler
class VelocityNet(nn.Module):
    """A fixed random velocity network on (B, 1, 8, 8): the identity plus a small MLP of the input and a
    sinusoidal embedding of the timestep (1000 t); float64, seeded. It records the timesteps it is given."""

    def __init__(self, seed: int = 0, hidden: int = 32, emb: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        d = 64
        self.w1 = torch.randn(hidden, d + emb, generator=gen, dtype=F64) / math.sqrt(d + emb)
        self.w2 = torch.randn(d, hidden, generator=gen, dtype=F64) / math.sqrt(hidden)
        # frequencies 1 … 1/1000 per timestep unit: a wrong t changes the output at O(0.1)
        self.freqs = torch.exp(-math.log(1000.0) * torch.arange(emb // 2, dtype=F64) / (emb // 2))
        self.seen_t: list[Tensor] = []

    def forward(self, z: Tensor, t: Tensor, cond=None) -> Tensor:
        t = torch.as_tensor(t).to(F64).expand(z.shape[0])             # diffusers passes a scalar, we (batch,)
        self.seen_t.append(t.clone())
        angles = t[:, None] * self.freqs
        h = torch.cat([z.flatten(1), angles.sin(), angles.cos()], 1) @ self.w1.T
        return z + 0.5 * torch.tanh(nn.functional.silu(h) @ self.w2.T).view_as(z)


def _flow_scheduler(shift: float):
    if os.environ.get("CI"):
        import diffusers
    else:
        diffusers = pytest.importorskip("diffusers")
    config = dict(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                  base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False, shift_terminal=None,
                  use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                  time_shift_type="exponential", stochastic_sampling=False)
    cls = diffusers.FlowMatchEulerDiscreteScheduler
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(config) == params, "set every option explicitly, so no diffusers default decides the result"
    return cls(**config)


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
@pytest.mark.parametrize("n,shift,float64_tables,rtol", [
    (5, 1.0, True, 5e-6), (10, 3.0, True, 5e-6), (25, 1.0, True, 5e-6),
    (10, 3.0, False, 2e-5),                                              # diffusers untouched: its float32 t
])
def test_euler_matches_flow_match_euler(n, shift, float64_tables, rtol):
    """diffusers' loop (set_timesteps → net → step) against our euler through FlowDenoiser, same t, same noise.

    diffusers' default timesteps start at t = 1 (σ = ∞), which no σ grid holds; it is given ours (its
    unshifted t, which it shifts itself) through ``set_timesteps(sigmas=…)``. Its step() rounds the sample to
    float32, hence 5e-6 (measured ≤ 2.1e-7); with its float32 t table untouched 2e-5 (measured 8.9e-7), relative to
    the sample's magnitude (at least 1). Euler in σ-form and in t-form are the same step: both give
    x_t' = (1-t') x̂0 + t' ε̂."""
    cfg = flow_config(f"diffusion.flow_shift={shift}")
    grid = config_sigmas(cfg, n, "flow")                                 # σ, float64, ending in 0
    t = grid / (1 + grid)
    sched = _flow_scheduler(shift)
    sched.set_timesteps(sigmas=(grid[:-1] / (grid[:-1] + shift)).tolist())  # the unshifted t
    torch.testing.assert_close(sched.sigmas.double(), t, rtol=1e-6, atol=0)  # the same t, to float32
    if float64_tables:
        sched.sigmas, sched.timesteps = t.clone(), 1000 * t[:-1]

    net = VelocityNet()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1234), dtype=F64)
    x = float(t[0]) * noise                                              # x_t at t_0 from pure noise
    ref_xs = []
    for step_t in sched.timesteps:
        ref_xs.append(x)
        x = sched.step(net(x, step_t), step_t, x).prev_sample
    ref, t_ref = x, torch.stack(net.seen_t)

    net.seen_t, xs = [], []
    out = samplers.get("euler")(FlowDenoiser(net), float(grid[0]) * noise, grid,
                                callback=lambda i, s, x_i, x0: xs.append(x_i / (1 + float(s))))  # σ-form → x_t
    torch.testing.assert_close(torch.stack(net.seen_t), t_ref, rtol=0, atol=1e-9 if float64_tables else 1e-3)
    for i, (x_i, r_i) in enumerate([*zip(xs, ref_xs, strict=True), (out, ref)]):
        scale = max(1.0, float(r_i.abs().max()))
        err = float((x_i - r_i).abs().max())
        assert err <= rtol * scale, f"step {i} of {n}: max |Δ| = {err:.3g} > {rtol:g} × {scale:.3g}"


# --------------------------------------------------------------------------- (4) config refusals
@pytest.mark.parametrize("override, message", [
    ("diffusion.parameterization='rf'", "diffusion.parameterization must be eps, x0, v or edm .* or flow"),
    ("diffusion.flow_logit_std=0", "diffusion.flow_logit_std must be > 0, got 0.0"),
    ("diffusion.flow_shift=-1", "diffusion.flow_shift must be > 0, got -1.0"),
    ("sample.grid='trailing'", "sample.grid must be karras, exponential or flow for a flow model"),
])
def test_bad_flow_configs_are_refused_in_one_line(override, message):
    with pytest.raises(UndiffuseError, match=message) as err:
        flow_config(override)
    assert "\n" not in str(err.value)
