"""Fixtures shared by several test files."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from undiffuse.cli import app, main

ROOT = Path(__file__).resolve().parents[1]

# The five Fashion-MNIST classes the shipped classifier names best on real test images (Trouser, Sandal, Sneaker,
# Bag, Ankle boot: 96–99 % of the 10 000, the other five 76–95 %), so that a miss is the sampler's or the model's,
# not the classifier's confusion of shirts with T-shirts and coats with pullovers.
CLEAR_CLASSES = (1, 5, 7, 8, 9)


def draw_clear_classes(model, per_class: int = 2, **request):
    """``per_class`` seeded images (seed 100·class) of each of CLEAR_CLASSES: (images, asked labels)."""
    import torch

    from undiffuse.sampling import SampleRequest, generate

    images, labels = [], []
    for c in CLEAR_CLASSES:
        drawn, asked = generate(model, SampleRequest(n=per_class, seed=100 * c, label=c, **request), progress=False)
        images.append(drawn)
        labels.append(asked)
    return torch.cat(images), torch.cat(labels)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the `undiffuse` command, as a user sees them."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


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


# --------------------------------------------------------------------------- a tiny sound model
RATE, LENGTH = 4000, 2048  # 32 frames of hop 64: a 1 × 32 × 32 spectrogram


def tone_folder(root, per_class: int = 6):
    """Two classes of tones: "low" around 300 Hz, "high" around 1 200 Hz, of varied pitch and length."""
    rng = np.random.default_rng(0)
    for name, base in (("high", 1200.0), ("low", 300.0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            t = np.arange(int(RATE * rng.uniform(0.2, 0.4))) / RATE
            wave = 0.5 * np.sin(2 * np.pi * base * rng.uniform(0.9, 1.1) * t)
            sf.write(root / name / f"{i}.wav", wave.astype(np.float32), RATE)
    return root


def sound_config(tmp_path, folder):
    text = f"""
name = "tones"
out_dir = "{tmp_path / 'run'}"
[data]
name = "audio_folder"
path = "{folder}"
image_size = 32
channels = 1
[space]
kind = "spectrogram"
rate = {RATE}
length = {LENGTH}
n_fft = 256
hop = 64
n_mels = 32
[model]
channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = []
dropout = 0.0
groups = 4
[diffusion]
parameterization = "v"
[train]
steps = 6
batch_size = 8
warmup = 2
sample_every = 6
checkpoint_every = 6
log_every = 2
[sample]
sampler = "dpmpp_2m"
steps = 3
grid = "trailing"
guidance = 2.0
"""
    path = tmp_path / "tones.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tone_run(tmp_path_factory):
    """A tiny two-class tone model trained for 6 steps (its preview at step 6)."""
    import torch
    tmp_path = tmp_path_factory.mktemp("tones")
    config = sound_config(tmp_path, tone_folder(tmp_path / "clips"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", str(config), "--no-progress"])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output + str(result.exception)
    return tmp_path / "run"


VIDEO_RECIPE = """
name = "sprites"
out_dir = "{run}"
[data]
name = "moving_sprites"
image_size = 16
channels = 1
frames = 4
clips = 64
[model]
channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [8]
dropout = 0.0
num_heads = 2
groups = 4
temporal = "both"
[diffusion]
parameterization = "v"
[train]
steps = 4
batch_size = 8
warmup = 2
sample_every = 4
checkpoint_every = 4
log_every = 2
[sample]
sampler = "dpmpp_2m"
steps = 3
grid = "trailing"
guidance = 2.0
"""


@pytest.fixture(scope="session")
def video_run(tmp_path_factory):
    """A tiny class-conditional moving-sprites model (4 frames of 16×16) trained for 4 steps."""
    tmp = tmp_path_factory.mktemp("video")
    recipe = tmp / "sprites.toml"
    recipe.write_text(VIDEO_RECIPE.format(run=tmp / "run"))
    result = CliRunner().invoke(app, ["train", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output + str(result.exception)
    return tmp / "run"
