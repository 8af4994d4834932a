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


# --------------------------------------------------------------------------- the toy run is a Trainer run
def test_the_toy_run_is_a_trainer_run_that_resumes(tmp_path, monkeypatch):
    """The demo's loop is the one training loop: its run folder has the checkpoints, log and model of any run, and
    a run interrupted half-way and resumed ends with the weights of the uninterrupted one."""
    import json
    import signal

    from undiffuse.checkpoint import load_checkpoint
    from undiffuse.train import Interrupted, Trainer

    config = ToyConfig(data="eight_gaussians", seconds=None, steps=40, batch_size=64, width=32, depth=1, seed=2)
    whole = train_toy(config, progress=False, out_dir=tmp_path / "whole")
    assert whole.steps == 40 and len(whole.losses) == 40 and whole.out_dir == tmp_path / "whole"
    assert (tmp_path / "whole" / "model.safetensors").is_file()
    assert (tmp_path / "whole" / "checkpoints" / "latest.safetensors").is_file()
    saved = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert saved["data"]["toy_set"] == "eight_gaussians" and saved["train"]["lr_schedule"] == "linear"
    last = json.loads((tmp_path / "whole" / "log.jsonl").read_text().splitlines()[-1])
    warm = min(1, 40 / config.warmup)  # the 40th step is still warming up, and decayed linearly over the budget
    assert last["step"] == 40 and last["lr"] == pytest.approx(config.lr * warm * (1 - 0.9 * 39 / 40))

    step = Trainer.train_step

    def stop_at_20(self):  # as SIGINT would: finish the step, checkpoint, stop
        out = step(self)
        if self.step == 20:
            self._stop_signal = signal.SIGINT
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_at_20)
    with pytest.raises(Interrupted, match="at step 20"):
        train_toy(config, progress=False, out_dir=tmp_path / "cut")
    monkeypatch.undo()
    resumed = train_toy(config, progress=False, out_dir=tmp_path / "cut", resume=True)
    assert resumed.steps == 40 and resumed.losses == whole.losses[20:]
    a, _ = load_checkpoint(tmp_path / "whole" / "model.safetensors")
    b, _ = load_checkpoint(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UndiffuseError, match="resume needs the out_dir"):
        train_toy(config, progress=False, resume=True)


def test_a_toy_time_budget_and_no_run_folder_left_behind():
    config = ToyConfig(data="two_moons", seconds=1.0, steps=None, batch_size=64, width=32, depth=1)
    run = train_toy(config, progress=False)
    assert run.steps > 0 and 1.0 <= run.seconds < 60 and run.out_dir is None


def test_plots_import_nothing_of_the_demo():
    """The demo imports its figure from plots; plots describes what it draws and imports nothing of the demo."""
    import ast
    from pathlib import Path

    import undiffuse.plots as plots

    tree = ast.parse(Path(plots.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "demo" not in imported and not any(m and m.endswith(".demo") for m in imported)
