"""Latent diffusion as a space: an autoencoder trained by `undiffuse train`, its scale, and diffusion in its latents."""

from pathlib import Path

import pytest
import torch

from undiffuse import samplers
from undiffuse.checkpoint import load_checkpoint
from undiffuse.config import load_config
from undiffuse.data.digits import load_digits_data
from undiffuse.errors import UndiffuseError
from undiffuse.models import load_model
from undiffuse.nets.autoencoder import psnr
from undiffuse.sampling import SampleRequest, generate
from undiffuse.spaces import load_autoencoder
from undiffuse.train import train

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")
TRAIN_IMAGES = 1500  # digits 0..1499 train the autoencoder; the other 297 are held out


def ae_config(out: Path, *extra: str):
    """A tiny f = 2 autoencoder for 16×16 digits: 2 × 8 × 8 latents."""
    return load_config(ROOT / "configs" / "fashion-mnist-autoencoder.toml", [
        f"out_dir='{out}'", "data.name='digits'", "data.image_size=16", f"data.limit={TRAIN_IMAGES}",
        "model.channels=16", "model.channel_mult=[1, 2]", "model.latent_channels=2", "model.groups=8",
        "train.steps=150", "train.batch_size=32", "train.lr=2e-3", "train.warmup=10", "train.ema_decay=0.9",
        "train.checkpoint_every=75", "train.sample_every=0", "train.threads=1", *extra])


@pytest.fixture(scope="module")
def latent_root(tmp_path_factory):
    """Latent caches go to a temporary data folder; an autoencoder trained once for the module."""
    root = tmp_path_factory.mktemp("latent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(root / "data"))
        train(ae_config(root / "ae"), progress=False)
        yield root


def test_autoencoder_round_trip_on_held_out_digits(latent_root):
    space = load_autoencoder(str(latent_root / "ae"))
    assert space.shape == (2, 8, 8) and space.factor == 2
    x = load_digits_data(size=16).batch(slice(TRAIN_IMAGES, None))                      # (297, 1, 16, 16)
    z = space.encode(x)
    assert z.shape == (len(x), 2, 8, 8)
    recon = space.decode(z)
    baseline = psnr(load_digits_data(size=16).batch(slice(0, TRAIN_IMAGES)).mean(0, keepdim=True).expand_as(x), x)
    gain = float(psnr(recon, x).mean() - baseline.mean())
    assert gain > 6, f"held-out PSNR only {gain:.1f} dB above the mean image"
    # the scale factor was measured on the training images: their scaled latents have unit variance
    train_z = space.encode(load_digits_data(size=16).batch(slice(0, 1024)))
    assert 0.8 < float(train_z.std()) < 1.2
    _, meta = load_checkpoint(latent_root / "ae" / "model.safetensors")
    assert meta["latent_scale"] == pytest.approx(space.scale)


def test_autoencoder_resume_is_bit_identical(latent_root, tmp_path):
    train(ae_config(tmp_path / "a", "train.steps=6", "train.checkpoint_every=3"), progress=False)
    train(ae_config(tmp_path / "b", "train.steps=3", "train.checkpoint_every=3"), progress=False)
    train(ae_config(tmp_path / "b", "train.steps=6", "train.checkpoint_every=3"), resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "a" / "model.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unfinished_autoencoder_and_autoencoder_as_model_are_refused(latent_root):
    with pytest.raises(UndiffuseError, match="no measured latent scale"):
        load_autoencoder(str(latent_root / "ae" / "checkpoints" / "latest.safetensors"))
    with pytest.raises(UndiffuseError, match="is an autoencoder, not a diffusion model"):
        load_model(latent_root / "ae")
    with pytest.raises(UndiffuseError, match="space.autoencoder must name an autoencoder"):
        load_config(ROOT / "configs" / "digits-smoke.toml", ["space.kind='latent'"])


def latent_config(out: Path, ae: Path, backbone: str, *extra: str):
    model = ["model.backbone='dit'", "model.dit_size='T'", "model.patch_size=2"] if backbone == "dit" else \
        ["model.channels=16", "model.channel_mult=[1, 2]", "model.attention_resolutions=[4]", "model.groups=8"]
    return load_config(ROOT / "configs" / "digits-smoke.toml", [
        f"out_dir='{out}'", "data.image_size=16", "space.kind='latent'", f"space.autoencoder='{ae}'",
        "train.steps=8", "train.checkpoint_every=8", "train.threads=1", *model, *extra])


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_latent_model_trains_samples_and_decodes(latent_root, backbone, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(latent_root / "data"))
        run = train(latent_config(tmp_path / "run", latent_root / "ae", backbone, "train.sample_every=8"),
                    progress=False)
    assert (run / "samples" / "step_00000008.png").is_file()  # the preview was decoded to 16×16 digits
    assert list((latent_root / "data" / "latents").glob("digits-*.safetensors"))  # encoded once, cached
    model = load_model(run)
    assert model.space.kind == "latent" and model.space.shape == (2, 8, 8)
    previews = []
    images, labels = generate(model, SampleRequest(n=3, steps=4, label=7), progress=False,
                              callback=lambda i, s, x, x0: previews.append(model.space.decode(x0)))
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1 and labels.tolist() == [7, 7, 7]
    assert len(previews) == 4 and previews[0].shape == (3, 1, 16, 16)
    from PIL import Image
    from typer.testing import CliRunner

    from undiffuse.cli import app
    r = CliRunner().invoke(app, ["sample", str(run), "--n", "2", "--steps", "3", "--class", "4", "--out",
                                 str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "0000_seed0_4.png") as im:
        assert im.size == (16, 16)


def test_every_sampler_runs_on_a_latent_model_that_carries_its_autoencoder(latent_root, tmp_path):
    import shutil
    ae = tmp_path / "ae-copy"
    shutil.copytree(latent_root / "ae", ae)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(latent_root / "data"))
        run = train(latent_config(tmp_path / "run", ae, "dit", "train.sample_every=0"), progress=False)
    shutil.rmtree(ae)  # the model file holds the autoencoder: it needs no other folder
    model = load_model(run)
    for name in samplers.names():
        images, _ = generate(model, SampleRequest(n=2, steps=3, sampler=name, guidance=2.0), progress=False)
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all(), name
    # the latent model names its space for another recipe (a fine-tuned or distilled model): the same autoencoder
    carried = load_autoencoder(str(run))
    assert carried.scale == model.space.scale and carried.shape == model.space.shape
    for a, b in zip(carried.autoencoder.state_dict().values(), model.space.autoencoder.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_tasks_on_a_latent_model_keep_their_guarantees(latent_root, tmp_path):
    from undiffuse.tasks import denoise, downsample, edit, inpaint, upscale
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(latent_root / "data"))
        model = load_model(train(latent_config(tmp_path / "run", latent_root / "ae", "unet", "train.sample_every=0"),
                                 progress=False))
    image = load_digits_data(size=16).batch(slice(TRAIN_IMAGES, TRAIN_IMAGES + 1))           # (1, 1, 16, 16)
    mask = torch.zeros(1, 16, 16)
    mask[:, 3:11, 5:13] = 1                                    # fill a box; it does not align with the 2×2 cells
    req = SampleRequest(n=2, steps=4, label=3, sampler="euler_ancestral")
    out = inpaint(model, image, mask, req)
    keep = (mask < 0.5).expand_as(out)
    assert out.shape == (2, 1, 16, 16) and torch.equal(out[keep], image.expand_as(out)[keep])
    assert not torch.allclose(out[~keep], image.expand_as(out)[~keep])
    low = downsample(image, 2)
    up = upscale(model, low, 2, SampleRequest(n=2, steps=3, label=3))
    assert torch.allclose(downsample(up, 2), low.expand(2, -1, -1, -1), atol=1e-5)
    edited = edit(model, image, SampleRequest(n=2, steps=4, label=3), strength=0.5)
    assert edited.shape == (2, 1, 16, 16) and torch.isfinite(edited).all()
    with pytest.raises(UndiffuseError, match="denoise runs in pixel space"):
        denoise(model, image, SampleRequest(n=1, steps=4))


def test_explain_page_of_a_latent_dit_has_the_latent_section(latent_root, tmp_path):
    import json

    from PIL import Image

    from undiffuse.explain.build import build_explainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(latent_root / "data"))
        run = train(latent_config(tmp_path / "run", latent_root / "ae", "dit", "train.sample_every=0"),
                    progress=False)
        page = build_explainer(str(run), out=tmp_path / "page", physics_seconds=1, progress=False)
    html = page.read_text()
    assert '<section id="latent" data-level="4">' in html and "Undoing the noise with a transformer" in html
    for name in ("latent.png", "latent-reverse.png", "frames/reverse_000.png"):
        with Image.open(page.parent / name) as im:
            im.load()
    numbers = json.loads((page.parent / "explain.json").read_text())["latent"]
    assert numbers["latent_shape"] == [2, 8, 8] and numbers["compression"] == 2
    assert numbers["psnr_db"] > 15


def test_evaluate_runs_on_a_latent_model_and_refuses_its_likelihood(tmp_path):
    from undiffuse.evaluation.evaluate import EvalSettings, evaluate
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_DATA", str(tmp_path / "data"))
        ae = train(ae_config(tmp_path / "ae", "data.image_size=32", "data.limit=256", "train.steps=20",
                             "train.checkpoint_every=20", "model.channel_mult=[1, 2, 2]"), progress=False)
        run = train(latent_config(tmp_path / "run", ae, "dit", "data.image_size=32", "data.limit=256",
                                  "train.sample_every=0"), progress=False)
    model = load_model(run)
    assert model.space.shape == (2, 8, 8)
    ev = evaluate(model, EvalSettings(samplers=["ddim"], steps=[3], n=16, features="classifier"), progress=False)
    assert ev.rows[0].nfe == 2 * 3 and ev.rows[0].scores.fid > 0   # guided: both branches at every step
    with pytest.raises(UndiffuseError, match="likelihood would be that of latents"):
        evaluate(model, EvalSettings(samplers=["ddim"], steps=[3], n=16, likelihood=4), progress=False)
