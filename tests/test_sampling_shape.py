"""Sampling options that shape the trajectory: the grid's σ range and ρ, x̂0 clipping, ε scaling."""

import math

import pytest
from conftest import random_model
import torch
from torch import nn

from undiffuse.config import Config, DataConfig, DiffusionConfig, ModelConfig
from undiffuse.denoiser import ClampedDenoiser, EpsilonScaledDenoiser, shaped
from undiffuse.errors import UndiffuseError
from undiffuse.models import LoadedModel
from undiffuse.process import GRID_SIGMA_MAX, sigmas_karras
from undiffuse.sampling import SampleRequest, generate


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """An unconditional 8×8 v-prediction U-Net on a 1000-step chain, random weights (F ≠ 0)."""
    cfg = Config(data=DataConfig(name="digits", image_size=8, channels=1),
                 model=ModelConfig(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[],
                                   dropout=0.0, groups=8),
                 diffusion=DiffusionConfig(parameterization="v"))
    return random_model(cfg, [], std=0.3)


def test_grid_range_and_rho_override_the_models(tiny):
    own = tiny.sigmas(6, "karras")
    assert math.isclose(float(own[0]), GRID_SIGMA_MAX)  # not the cosine chain's σ_max of 2·10⁴: capped at 80
    got = tiny.sigmas(6, "karras", sigma_min=0.15, sigma_max=80.0, rho=3.0)
    assert torch.allclose(got, sigmas_karras(6, 0.15, 80.0, 3.0))
    assert math.isclose(float(got[0]), 80.0) and math.isclose(float(got[-2]), 0.15) and got[-1] == 0
    exp = tiny.sigmas(4, "exponential", sigma_max=10.0)
    assert math.isclose(float(exp[0]), 10.0) and math.isclose(float(exp[-2]), float(own[-2]), rel_tol=1e-9)


@pytest.mark.parametrize("kw, message", [
    ({"grid": "trailing", "sigma_min": 0.1}, "takes no σ range"),
    ({"grid": "karras", "sigma_min": 5.0, "sigma_max": 1.0}, "need 0 < σ_min < σ_max"),
    ({"grid": "karras", "rho": 0.0}, "rho must be a positive number"),
])
def test_bad_grid_options_are_one_line_errors(tiny, kw, message):
    grid = kw.pop("grid")
    with pytest.raises(UndiffuseError, match=message):
        tiny.sigmas(4, grid, **kw)


def test_epsilon_scaling_divides_the_predicted_noise():
    class Fixed(nn.Module):
        def forward(self, x, sigma, cond=None):
            return torch.full_like(x, 0.25)

    x, sigma = torch.randn(3, 1, 4, 4) * 5, torch.full((3,), 5.0)
    eps = (x - 0.25) / sigma[:, None, None, None]
    got = EpsilonScaledDenoiser(Fixed(), 1.01)(x, sigma)
    assert torch.allclose(got, x - sigma[:, None, None, None] * eps / 1.01)
    # Above σ = 80 (a trailing grid's first step on a cosine chain is at 2·10⁴) it leaves x̂0 alone, row by row.
    mixed = torch.tensor([5.0, 2e4, 80.0])
    got = EpsilonScaledDenoiser(Fixed(), 1.01)(x, mixed)
    assert torch.allclose(got[[0, 2]], x[[0, 2]] - (x[[0, 2]] - 0.25) / 1.01)
    assert torch.allclose(got[1], torch.full_like(x[1], 0.25), atol=1e-6)
    with pytest.raises(UndiffuseError, match="ε scale"):
        EpsilonScaledDenoiser(Fixed(), 0.0)
    inner = Fixed()
    assert shaped(inner) is inner
    both = shaped(inner, 1.01, clip_x0=True)
    assert isinstance(both, ClampedDenoiser) and isinstance(both.inner, EpsilonScaledDenoiser)


def test_clip_x0_keeps_every_prediction_in_range_and_changes_the_result(tiny):
    seen = []
    base = SampleRequest(n=4, steps=5, sampler="dpmpp_2m", grid="karras", sigma_max=80.0, precision="fp32")
    free, _ = generate(tiny, base, progress=False, callback=lambda i, s, x, x0: seen.append(x0.abs().max()))
    assert max(seen) > 1, "the random net should overshoot [-1, 1] unclipped"
    seen.clear()
    req = SampleRequest(**{**base.__dict__, "clip_x0": True})
    clipped, _ = generate(tiny, req, progress=False, callback=lambda i, s, x, x0: seen.append(x0.abs().max()))
    assert max(seen) <= 1 and clipped.abs().max() <= 1
    assert not torch.allclose(free, clipped)


def test_cli_sample_refuses_a_range_on_a_uniform_t_grid(tmp_path, capsys):
    from undiffuse.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--n", "1", "--steps", "1", "--grid", "trailing", "--sigma-min", "0.1",
              "--out", str(tmp_path)])
    assert exit_.value.code != 0 and "takes no σ range" in capsys.readouterr().err
