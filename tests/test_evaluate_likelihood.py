"""True toy densities, the exact NLL of a trained 2-D model, and bits/dim through `undiffuse evaluate`."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from undiffuse.analytic import GaussianMixtureDenoiser
from undiffuse.cli import app
from undiffuse.data.toy import TOY_SETS, toy_dataset
from undiffuse.data.toy_density import toy_log_density

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_densities_integrate_to_one_and_cover_the_data(name):
    g = torch.linspace(-3, 3, 121, dtype=torch.float64)   # spacing 0.05: at most the noise's std
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    mass = toy_log_density(name, grid).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.02)   # Riemann sum; the checkerboard has edges
    assert bool(torch.isfinite(toy_log_density(name, toy_dataset(name, 2000, seed=5))).all())


def test_eight_gaussians_density_is_the_exact_mixture():
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    mixture = GaussianMixtureDenoiser(math.sqrt(2) * torch.stack([angle.cos(), angle.sin()], 1), 0.1)
    x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    torch.testing.assert_close(toy_log_density("eight_gaussians", x), mixture.log_density(x).double())


def test_two_moons_density_matches_a_histogram_of_samples():
    x = toy_dataset("two_moons", 200_000, seed=1).double()
    edges = torch.linspace(-2.5, 2.5, 26, dtype=torch.float64)
    counts = torch.histogramdd(x, bins=[edges, edges]).hist
    sub = (torch.arange(5, dtype=torch.float64) + 0.5) / 5 * 0.2          # 5×5 midpoints inside each bin
    cx = (edges[:-1, None] + sub).reshape(-1)
    grid = torch.stack(torch.meshgrid(cx, cx, indexing="ij"), -1).reshape(-1, 2)
    density = toy_log_density("two_moons", grid).exp().reshape(25, 5, 25, 5)
    predicted = density.mean(dim=(1, 3)) * 0.2**2 * len(x)                   # expected count per bin
    busy = counts > 500
    assert float(((counts[busy] - predicted[busy]).abs() / counts[busy]).max()) < 0.1


def _toy_run(tmp_path, steps):
    run = tmp_path / f"toy{steps}"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "toy-2d.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", f"train.steps={steps}",
                                      "--set", "data.toy_set='eight_gaussians'", "--set", "data.toy_size=4000",
                                      "--set", "model.channels=64"])
    assert result.exit_code == 0, result.output
    return run


def test_evaluate_gives_a_toy_model_its_exact_nll(tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(_toy_run(tmp_path, 600)), "--n", "300", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["data"] == "eight_gaussians" and ev["n"] == 300 and "true density" in result.output
    points = toy_dataset("eight_gaussians", 300, seed=10_000).double()
    assert ev["true_nll"] == pytest.approx(-float(toy_log_density("eight_gaussians", points).mean()))
    assert ev["gap"] > -3 * ev["gap_stderr"]                     # KL ≥ 0, up to sampling noise
    # the best single Gaussian (moment-matched) is ~3.2 nats from the truth; the model must be far closer
    gaussian = torch.distributions.MultivariateNormal(points.mean(0), torch.cov(points.T))
    gaussian_gap = float(-gaussian.log_prob(points).mean()) - ev["true_nll"]
    assert gaussian_gap > 2.5 and ev["gap"] < gaussian_gap / 2


def test_evaluate_reports_bits_per_dim(digits_run, tmp_path, monkeypatch):
    monkeypatch.setenv("UNDIFFUSE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(digits_run), "--n", "8", "--steps", "2", "--samplers", "ddim",
                                      "--features", "inception", "--likelihood", "2", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    lk = json.loads((out / "evaluation.json").read_text())["likelihood"]
    assert lk["n"] == 2 and lk["conditional"] is True
    vlb, ode = lk["vlb"]["bits_per_dim"], lk["ode"]["bits_per_dim"]
    assert 0 < ode < 30 and 0 < vlb < 30 and lk["ode"]["nfe"] > 2
    total = lk["vlb"]["prior"] + lk["vlb"]["diffusion"] + lk["vlb"]["decoder"]
    assert total == pytest.approx(vlb, rel=1e-6)
    assert "bits/dim of 2 held-out images given their class" in result.output
