"""2-D toy data, the MLP backbone, EMA and a short toy training run that must learn."""

import math

import pytest
import torch

from undiffuse import samplers
from undiffuse.data import TOY_SETS, toy_dataset
from undiffuse.demo import generate
from undiffuse.ema import EMA
from undiffuse.errors import UndiffuseError
from undiffuse.evaluation import energy_distance
from undiffuse.nets import MLP, FourierEmbedding, PositionalEmbedding
from undiffuse.train_toy import ToyConfig, torch_threads, train_toy


# --------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", list(TOY_SETS))
def test_toy_sets_are_seeded_2d_and_about_unit_scale(name):
    x = toy_dataset(name, 5000, seed=3)
    assert x.shape == (5000, 2) and x.dtype == torch.float32
    assert torch.equal(x, toy_dataset(name, 5000, seed=3))
    assert not torch.equal(x, toy_dataset(name, 5000, seed=4))
    assert x.mean(0).abs().max() < 0.1
    assert 0.6 < float(x.std(0).min()) and float(x.std(0).max()) < 1.3


def test_unknown_toy_set_names_the_known_ones():
    with pytest.raises(UndiffuseError, match="unknown toy data set 'moons'; known: two_moons, swiss_roll"):
        toy_dataset("moons", 10)
    with pytest.raises(UndiffuseError, match="positive integer"):
        toy_dataset("two_moons", 0)


def test_checkerboard_fills_only_the_dark_squares():
    x = toy_dataset("checkerboard", 4000) * 1.15          # back to [-2, 2]²
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert float((parity == 0).float().mean()) > 0.999   # rounding may move a point across an edge


# --------------------------------------------------------------------------- nets
@pytest.mark.parametrize("embedding", [PositionalEmbedding(16), FourierEmbedding(16)])
def test_noise_embeddings_are_bounded_features(embedding):
    e = embedding(torch.linspace(-2, 999, 7))
    assert e.shape == (7, 16) and bool((e.abs() <= 1).all())


def test_mlp_shapes_zero_start_and_labels():
    net = MLP(dim=3, width=32, depth=2, noise_embedding="positional", num_classes=4)
    x, t = torch.randn(5, 3), torch.rand(5) * 999
    assert torch.equal(net(x, t), torch.zeros(5, 3))      # zero-initialised output layer
    torch.nn.init.normal_(net.out.weight)
    labels = torch.tensor([0, 1, 2, 3, -1])
    assert net(x, t, labels).shape == (5, 3)
    assert torch.allclose(net(x, t, torch.full((5,), -1)), net(x, t))   # -1 and None: no class
    assert net(x.double(), torch.tensor(3.0)).dtype == torch.float64     # scalar noise level
    with pytest.raises(UndiffuseError, match="class labels must be in"):
        net(x, t, torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(UndiffuseError, match=r"shape \(batch, 3\)"):
        net(torch.randn(5, 2), t)
    with pytest.raises(UndiffuseError, match="unconditional"):
        MLP(width=16, depth=1)(torch.randn(2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- training
def test_ema_warms_up_then_averages():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)                                     # β = min(0.9, 2/11)
    assert math.isclose(float(ema.model.weight), 9 / 11, rel_tol=1e-6)
    assert not ema.model.weight.requires_grad


def test_budget_must_be_given():
    with pytest.raises(UndiffuseError, match="budget"):
        ToyConfig(seconds=None, steps=None)


def test_a_short_run_learns_eight_gaussians():
    config = ToyConfig(data="eight_gaussians", seconds=None, steps=400, batch_size=256, width=64, depth=2,
                       lr=3e-3, ema_decay=0.99, seed=1)
    run = train_toy(config, progress=False)
    assert run.steps == 400 and not run.denoiser.training
    first, last = sum(run.losses[:20]) / 20, sum(run.losses[-50:]) / 50
    assert last < 0.9 * first                             # ≈ 1.0 → 0.79; the floor is the irreducible error

    with torch_threads(1):
        gen = generate(run.denoiser, 1000, "dpmpp_2m", steps=20)
    data = toy_dataset("eight_gaussians", 1000, seed=99)
    noise = samplers.randn((1000, 2), torch.Generator().manual_seed(5))
    learned, untrained = energy_distance(gen.samples, data), energy_distance(noise, data)
    assert learned < 0.3 * untrained, (learned, untrained)  # measured ≈ 0.19
    assert gen.path.shape == (21, 1000, 2) and gen.path_sigmas.shape == (21, 1000)
