"""Fixtures shared by several test files."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from undiffuse.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets gain nothing from a second thread, and on a busy machine every 2-thread op can stall for a
    scheduler slice (measured: 30 ms per small conv under load): modules of tiny-net tests run on one."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A class-conditional digits model trained for 4 steps: enough to sample and score, in seconds."""
    run = tmp_path_factory.mktemp("digits") / "run"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=4"])
    assert result.exit_code == 0, result.output
    return run


def random_model(cfg, class_names: list[str], std: float):
    """A LoadedModel of ``cfg`` with seeded random weights, the zero-initialised layers too (so F ≠ 0)."""
    import torch
    from torch import nn

    from undiffuse.models import LoadedModel, build_denoiser, build_net

    torch.manual_seed(0)
    net = build_net(cfg, num_classes=len(class_names))
    for p in net.parameters():
        if not p.any():
            nn.init.normal_(p, std=std)
    net.eval().requires_grad_(False)
    return LoadedModel(build_denoiser(cfg, net), cfg, class_names, "tiny", {})
