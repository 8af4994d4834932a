"""A tiny text-conditioned U-Net trains on captioned emoji and generates from a prompt, end to end;
guidance with w = 1 is the plain conditional denoiser."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from undiffuse.cli import app
from undiffuse.data import emoji
from undiffuse.guidance import CFGDenoiser
from undiffuse.images import read_params
from undiffuse.models import load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (emoji.emoji_dir() / "emoji.json").is_file(),
                                reason="scripts/setup.sh fetches the emoji")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "run"
    sets = [f"out_dir='{run}'", "data.limit=24", "data.image_size=16", "data.text_length=12", "model.channels=16",
            "model.channel_mult=[1, 2]", "model.attention_resolutions=[8]", "model.groups=8", "train.steps=3",
            "train.checkpoint_every=3", "train.sample_every=3", "train.threads=1"]
    args = ["train", str(ROOT / "configs" / "emoji-text.toml"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run


def test_text_model_trains_and_generates_from_a_prompt(text_run, tmp_path):
    assert (text_run / "samples" / "step_00000003.png").is_file()        # guided preview from captions
    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generate", "a red heart", "--model", str(text_run), "--n", "3",
                                      "--steps", "3", "--seed", "4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    singles = sorted(out.glob("0*.png"))
    assert len(singles) == 3
    with Image.open(singles[0]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    params = read_params(singles[1])
    assert params["prompt"] == "a red heart" and params["seed"] == 5 and params["guidance"] == 3.0


def test_generate_from_png_repeats_the_prompt_and_pixels(text_run, tmp_path):
    import numpy as np

    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generate", "a green tree", "--model", str(text_run), "--n", "2", "--steps",
                                      "3", "--seed", "9", "--sampler", "Euler a", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    first = sorted(out.glob("0*.png"))[1]
    with Image.open(first) as im:
        assert im.text["parameters"].splitlines()[0] == "a green tree"  # A1111's layout: the prompt line first
        assert "Sampler: Euler a" in im.text["parameters"]
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["generate", "--from-png", str(first), "--out", str(again), "--no-progress"])
    assert result.exit_code == 0 and "'a green tree'" in result.output, result.output
    (copy,) = sorted(again.glob("0*.png"))
    with Image.open(first) as a, Image.open(copy) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert read_params(copy) == read_params(first)
    result = CliRunner().invoke(app, ["generate", "--no-progress"])
    assert result.exit_code != 0 and "give a PROMPT" in str(result.exception)


def test_prompt_changes_the_image_and_w1_is_the_conditional_denoiser(text_run):
    model = load_model(text_run)
    enc = model.text_encoder()
    x, sigma = torch.randn(2, 3, 16, 16), torch.full((2,), 2.0)
    heart, tree = enc(["a red heart"] * 2).as_cond(), enc(["a green tree"] * 2).as_cond()
    plain = model.denoiser(x, sigma, heart)
    torch.testing.assert_close(CFGDenoiser(model.denoiser, 1.0)(x, sigma, heart), plain)
    with torch.no_grad():  # 3 steps leave the zero-initialised output layers near zero: wake every layer up
        g = torch.Generator().manual_seed(0)
        for p in model.denoiser.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out_heart, out_tree = model.denoiser(x, sigma, heart), model.denoiser(x, sigma, tree)
    assert (out_heart - out_tree).abs().max() > 1e-3                    # the prompt reaches the network
    model.denoiser.net.text_embed.weight.zero_()
    for block in model.denoiser.net.modules():
        if block.__class__.__name__ == "CrossAttentionBlock":
            block.proj.weight.data.zero_()
            block.proj.bias.data.zero_()
    torch.testing.assert_close(model.denoiser(x, sigma, heart), model.denoiser(x, sigma, tree))  # only that way


def test_class_model_refuses_a_prompt(tmp_path):
    run = tmp_path / "digits"
    r = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress", "--set",
                                 f"out_dir='{run}'", "--set", "train.steps=1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["generate", "a cat", "--model", str(run), "--no-progress"])
    assert r.exit_code != 0 and "not text-conditioned" in str(r.exception)


def test_shipped_latent_dit_text_model_generates():
    from undiffuse.model_files import shipped_models
    from undiffuse.sampling import SampleRequest, generate
    assert "emoji-dit" in shipped_models()
    model = load_model("emoji-dit")
    assert model.text_conditioned and model.space.kind == "latent" and model.config.model.backbone == "dit"
    images, _ = generate(model, SampleRequest(n=2, steps=3, prompt="a red heart", guidance=3.0), progress=False)
    assert images.shape == (2, 3, 64, 64) and bool(torch.isfinite(images).all())
