"""Inpaint, upscale, edit and denoise: consistency with the input under every sampler, the CLI
commands, and real denoising on held-out Fashion-MNIST with the shipped model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from undiffuse import samplers
from undiffuse.cli import app, main
from undiffuse.images import read_params
from undiffuse.model_files import resolve_model_path, shipped_models
from undiffuse.models import load_model
from undiffuse.sampling import SampleRequest
from undiffuse.tasks import denoise, downsample, edit, estimate_noise_sigma, inpaint, upscale

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    run = tmp_path_factory.mktemp("tasks") / "run"
    r = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                 "--set", f"out_dir='{run}'", "--set", "train.steps=4",
                                 "--set", "diffusion.parameterization='v'"])
    assert r.exit_code == 0, r.output
    return load_model(run)


def image8(seed=0):
    return torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", samplers.names())
def test_inpainting_keeps_known_pixels_with_every_sampler(digits, name):
    img, hole = image8(), torch.zeros(8, 8)
    hole[2:6, 3:7] = 1
    out = inpaint(digits, img, hole, SampleRequest(n=2, steps=4, sampler=name, label=-1))
    keep = hole == 0
    torch.testing.assert_close(out[:, :, keep], img[:, keep].expand(2, 1, -1), atol=1e-4, rtol=0)
    assert not torch.allclose(out[:, :, ~keep], img[:, ~keep].expand(2, 1, -1), atol=1e-2)  # the hole is new


def test_inpainting_with_resampling(digits):
    img, hole = image8(1), torch.zeros(8, 8)
    hole[:4] = 1
    out = inpaint(digits, img, hole, SampleRequest(n=1, steps=3, label=3), resample=2)
    torch.testing.assert_close(out[0, :, 4:], img[:, 4:], atol=1e-4, rtol=0)


def test_reconstruction_guidance_moves_the_unknown_part_down_the_known_parts_error():
    """A denoiser that answers the mean of two frames for both: the known frame's error is
    ‖y − (x_a + x_b)/2‖², whose gradient in x_b is 2 (y − mean) · (−½) = −(y − mean), so weight w moves
    the unknown frame's estimate to mean + (w/2)(y − mean): w = 2 gives exactly y (VDM eq. 7)."""
    from undiffuse.tasks.consistency import InpaintDenoiser, ReconstructionGuidedDenoiser

    class MeanOfFrames(torch.nn.Module):
        def forward(self, x, sigma, cond=None):
            return x.mean(dim=1, keepdim=True).expand_as(x)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 2, 1, 4, 4, generator=g) * 0.3, torch.rand(1, 2, 1, 4, 4, generator=g) - 0.5
    mask = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1)
    sigma = torch.full((3,), 0.5)
    mean = x.mean(dim=1)
    for w in (0.0, 1.0, 2.0):
        out = ReconstructionGuidedDenoiser(MeanOfFrames(), y, mask, w)(x, sigma)
        torch.testing.assert_close(out[:, 0], y[:, 0].expand(3, 1, 4, 4))          # the known frame as given
        torch.testing.assert_close(out[:, 1], (mean + w / 2 * (y[:, 0] - mean)).clamp(-1, 1))
    torch.testing.assert_close(ReconstructionGuidedDenoiser(MeanOfFrames(), y, mask, 0.0)(x, sigma),
                               InpaintDenoiser(MeanOfFrames(), y, mask)(x, sigma))


@pytest.mark.parametrize("name", samplers.names())
def test_upscaled_output_averages_back_to_the_input(digits, name):
    low = image8(2)[:, :4, :4]
    out = upscale(digits, low, 2, SampleRequest(n=2, steps=4, sampler=name, label=-1))
    assert out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(downsample(out, 2), low.expand(2, 1, 4, 4), atol=1e-4, rtol=0)


def test_edit_strength_controls_how_far_it_moves(digits):
    img = image8(3)
    near = edit(digits, img, SampleRequest(n=4, steps=6, label=-1), strength=0.05)
    far = edit(digits, img, SampleRequest(n=4, steps=6, label=-1), strength=1.0)
    assert (near - img).abs().mean() < (far - img).abs().mean()


def test_noise_sigma_estimate():
    g = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 64, 64)
    for s in (0.05, 0.2, 0.5):
        assert estimate_noise_sigma(flat + s * torch.randn(flat.shape, generator=g)) == pytest.approx(s, rel=0.05)


def test_task_commands_end_to_end(digits, tmp_path, capsys):
    run = Path(digits.source)
    Image.fromarray((np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "black.png")
    cases = [["inpaint", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")],
             ["upscale", str(tmp_path / "in.png"), "--factor", "2"],
             ["edit", str(tmp_path / "in.png"), "--strength", "0.5", "--class", "7"],
             ["denoise", str(tmp_path / "in.png")]]
    for args in cases:
        out = tmp_path / args[0]
        r = CliRunner().invoke(app, [*args, "--model", str(run), "--steps", "3", "--out", str(out)])
        assert r.exit_code == 0, (args, r.output)
        assert (out / "grid.png").is_file() and list(out.glob("0000_*.png"))
    for args, message in [(["inpaint", str(tmp_path / "in.png"), "--mask", str(tmp_path / "black.png")],
                           "must have both white"),
                          (["upscale", str(tmp_path / "in.png"), "--factor", "3"], "--factor must be 2 or 4"),
                          (["edit", str(tmp_path / "in.png"), "--strength", "1.5"], "strength must be in"),
                          (["denoise", str(tmp_path / "nope.png")], "cannot read")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([*args, "--model", str(run)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif("fashion-mnist" not in shipped_models(), reason="the shipped model is not in this checkout")
def test_task_commands_sample_as_the_card_unless_told(tmp_path):
    card = load_model("fashion-mnist").config.sample
    Image.fromarray((np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    base = ["edit", str(tmp_path / "in.png"), "--class", "Sneaker", "--n", "1", "--steps", "2"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "card")])
    assert r.exit_code == 0, r.output
    got = read_params(tmp_path / "card" / "grid.png")
    assert (got["sampler"], got["guidance"], got["guidance_parallel"], got["eps_scale"]) == \
        (card.sampler, card.guidance, card.guidance_parallel, card.eps_scale)
    assert list(got["guidance_interval"]) == list(card.guidance_interval)
    r = CliRunner().invoke(app, [*base, "--sampler", "ddim", "--guidance", "2", "--out", str(tmp_path / "told")])
    assert r.exit_code == 0, r.output
    told = read_params(tmp_path / "told" / "grid.png")
    assert (told["sampler"], told["guidance"]) == ("ddim", 2.0)


@pytest.mark.skipif("fashion-mnist" not in shipped_models(), reason="the shipped model is not in this checkout")
def test_denoising_beats_the_noisy_input_and_a_blur_on_test_images():
    from undiffuse.data.fashion_mnist import load_fashion_mnist
    model = load_model("fashion-mnist")
    test = load_fashion_mnist("test", 32, limit=6).images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)

    def psnr(a, b):
        return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))

    def best_blur(y, x):
        out = []
        for s in (0.5, 0.8, 1.2):
            k = torch.exp(-torch.arange(-3, 4.0) ** 2 / (2 * s * s))
            k = (k / k.sum())
            z = torch.nn.functional.conv2d(torch.nn.functional.pad(y[None], (3, 3, 3, 3), mode="replicate"),
                                           (k[:, None] * k[None]).view(1, 1, 7, 7))
            out.append(psnr(z[0], x))
        return max(out)

    for sigma in (0.1, 0.2, 0.4):
        ours, noisy, blur = [], [], []
        for x in test:
            y = x + sigma * torch.randn(x.shape, generator=g)
            clean, used = denoise(model, y, SampleRequest(n=1, steps=10, label=-1, guidance=1.0))
            ours.append(psnr(clean[0], x))
            noisy.append(psnr(y, x))
            blur.append(best_blur(y, x))
        assert np.mean(ours) > np.mean(noisy) + 3 and np.mean(ours) > np.mean(blur) + 1, (sigma, ours, blur)


def test_model_paths_expand_the_home_folder(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "teacher"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/runs/teacher") == run / "model.safetensors"
