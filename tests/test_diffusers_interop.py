"""diffusers folders in and out: a tiny random UNet2DModel pipeline saved with ``save_pretrained`` sampled by our
ddim/ddpm equals diffusers' own pipeline/scheduler loop; every sampler runs on it; an undiffuse U-Net exported
with ``undiffuse export --to diffusers`` computes in diffusers what it computes here; hostile or broken folders are
refused in one line and never unpickled.

Tolerances. Both sides run the same float32 UNet2DModel on the same noise (per-sample generators seeded alike:
diffusers' ``randn_tensor`` with a list of generators draws exactly what ``samplers.randn`` draws, at the same
steps). What differs is only rounding: diffusers keeps ᾱ_t as a float32 cumulative product where we take the same
float32 β_t to float64; we step in σ-form (x = x_t/√ᾱ_t), so x_t is scaled by √ᾱ_t and back, in float32; and the
network is called at t(σ(t)) recovered from a float32 σ (|Δt| ≲ 1e-4). So the final samples agree to float32
rounding amplified over the steps: RTOL = 1e-4 of the samples' scale (max |x|, at least 1); measured ≤ 7e-6.
An exported net agrees with ours to 1e-5 relative (measured ≤ 1e-6: the same float32 operations in another order).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import run_cli
from undiffuse import samplers
from undiffuse.checkpoint import save_checkpoint
from undiffuse.config import Config, DataConfig, DiffusionConfig, ModelConfig, load_config, to_dict
from undiffuse.errors import UndiffuseError
from undiffuse.interop.diffusers_export import export_diffusers
from undiffuse.interop.diffusers_load import scheduler_betas
from undiffuse.models import LoadedModel, build_denoiser, build_net, build_schedule, load_model

if os.environ.get("CI"):
    import diffusers  # a declared test dependency (pyproject [test]): in CI it must run, never skip
else:
    diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-4          # our sampler vs diffusers' loop, relative to max(1, max |x|) (see the module docstring)
EXPORT_RTOL = 1e-5   # an exported net vs ours
SIZE, STEPS, SEEDS = 8, 6, [3, 4, 5]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


# --------------------------------------------------------------------------- tiny diffusers folders
def tiny_unet(classes: int | None = None, seed: int = 0):
    """A random 2-level UNet2DModel on 1×8×8 (45 k parameters), attention at 4×4, optionally class-conditional."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8, num_class_embeds=classes).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """eps: a DDPMPipeline (ε, linear, clip_sample on); v: a DDIMPipeline (v, cosine, no clipping, 3 classes);
    bare: a UNet2DModel folder with its scheduler config beside it (ε, trained betas)."""
    root = tmp_path_factory.mktemp("diffusers")
    eps = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=diffusers.DDPMScheduler(beta_schedule="linear"))
    eps.save_pretrained(root / "eps")
    v = diffusers.DDIMPipeline(unet=tiny_unet(classes=3, seed=1), scheduler=diffusers.DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False))
    v.save_pretrained(root / "v")
    trained = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).tolist()
    tiny_unet(seed=2).save_pretrained(root / "bare")
    diffusers.DDIMScheduler(trained_betas=trained, clip_sample=False).save_config(root / "bare")
    return {"eps": root / "eps", "v": root / "v", "bare": root / "bare"}


def diffusers_loop(folder, kind: str, steps: int, labels=None, use_clipped: bool = True, unet_dir: str = "unet"):
    """diffusers' own denoising loop (set_timesteps → unet → step) from randn_tensor noise, per-sample generators."""
    from diffusers.utils.torch_utils import randn_tensor
    unet = diffusers.UNet2DModel.from_pretrained(folder / unet_dir if unet_dir else folder).eval()
    config = diffusers.DDIMScheduler.load_config(folder / "scheduler" if unet_dir else folder)
    scheduler = (diffusers.DDIMScheduler if kind == "ddim" else diffusers.DDPMScheduler).from_config(config)
    gens = samplers.make_generators(SEEDS)
    x = randn_tensor((len(SEEDS), 1, SIZE, SIZE), generator=gens)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, class_labels=labels).sample
            extra = {"eta": 0.0, "use_clipped_model_output": use_clipped} if kind == "ddim" else {"generator": gens}
            x = scheduler.step(out, t, x, **extra).prev_sample
    return x


def ours(folder, kind: str, steps: int, labels=None):
    """Our sampler on the loaded folder, on diffusers' timesteps (the 'leading' grid), from the same noise."""
    model = load_model(folder)
    sigmas = model.sigmas(steps, "leading")
    gens = samplers.make_generators(SEEDS)
    x = samplers.randn((len(SEEDS), 1, SIZE, SIZE), gens) * math.sqrt(1 + float(sigmas[0]) ** 2)  # x_t/√ᾱ_t
    return samplers.get(kind)(model.denoiser, x, sigmas, cond=labels, generator=gens)


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


# --------------------------------------------------------------------------- diffusers models in
@pytest.mark.parametrize("schedule", [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear"),
                                      dict(beta_schedule="squaredcos_cap_v2"), dict(beta_schedule="sigmoid"),
                                      dict(trained_betas=[0.01 + 0.0005 * i for i in range(100)],
                                           num_train_timesteps=100)])
def test_betas_are_diffusers_own(schedule, tmp_path):
    """The β chain rebuilt from the scheduler config is bit for bit the one diffusers builds."""
    config = diffusers.DDPMScheduler(**schedule).config
    betas, _ = scheduler_betas(dict(config), tmp_path)
    assert torch.equal(betas, diffusers.DDPMScheduler.from_config(config).betas)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_eps_pipeline_equals_diffusers_pipeline(folders, kind):
    """ε, linear β, clip_sample on: our ddim/ddpm on the folder equal DDIMPipeline / DDPMPipeline themselves."""
    pipe_class = diffusers.DDIMPipeline if kind == "ddim" else diffusers.DDPMPipeline
    pipe = pipe_class.from_pretrained(folders["eps"], use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    extra = {"eta": 0.0, "use_clipped_model_output": True} if kind == "ddim" else {}
    theirs = pipe(batch_size=len(SEEDS), generator=samplers.make_generators(SEEDS), num_inference_steps=STEPS,
                  output_type="pt", **extra).images                                       # (B, C, H, W) in [0, 1]
    x = ours(folders["eps"], kind, STEPS)
    assert float(x.abs().max()) <= 1.0  # clip_sample: x̂0 in [-1, 1]
    assert rel_err((x / 2 + 0.5).clamp(0, 1), theirs) < RTOL
    assert rel_err(x, diffusers_loop(folders["eps"], kind, STEPS)) < RTOL


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_v_prediction_class_conditional_equals_diffusers_loop(folders, kind):
    labels = torch.tensor([0, 2, 1])
    theirs = diffusers_loop(folders["v"], kind, STEPS, labels=labels)
    assert rel_err(ours(folders["v"], kind, STEPS, labels), theirs) < RTOL


def test_bare_unet_folder_with_trained_betas(folders):
    model = load_model(folders["bare"])
    assert model.config.diffusion.betas and model.num_classes == 0
    assert torch.allclose(build_schedule(model.config).sigmas, model.denoiser.schedule.sigmas, rtol=0, atol=0)
    theirs = diffusers_loop(folders["bare"], "ddim", STEPS, use_clipped=False, unet_dir="")
    assert rel_err(ours(folders["bare"], "ddim", STEPS), theirs) < RTOL


def test_loaded_config_describes_the_model(folders):
    model = load_model(folders["v"])
    cfg = model.config
    assert model.class_names == ["0", "1", "2"] and cfg.sample.guidance == 1.0  # no "no class" embedding
    assert (cfg.data.channels, cfg.data.image_size, cfg.diffusion.parameterization) == (1, SIZE, "v")
    assert cfg.model.channel_mult == [1, 2] and cfg.model.attention_resolutions == [4]
    with pytest.raises(UndiffuseError, match="no 'no class' embedding"):
        model.denoiser(torch.zeros(1, 1, SIZE, SIZE), torch.ones(1), torch.tensor([-1]))


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_runs(folders, name):
    model = load_model(folders["v"])
    sigmas = model.sigmas(4, "karras")
    gens = samplers.make_generators(SEEDS)
    x = samplers.randn((len(SEEDS), 1, SIZE, SIZE), gens) * float(sigmas[0])
    out = samplers.get(name)(model.denoiser, x, sigmas, cond=torch.tensor([0, 1, 2]), generator=gens)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_cli_samples_a_diffusers_folder(folders, tmp_path):
    code, out, err = run_cli(["sample", str(folders["v"]), "--n", "3", "--steps", "2", "--no-progress",
                              "--out", str(tmp_path)])
    assert code == 0, err
    assert len(list(tmp_path.rglob("*.png"))) >= 3


def test_cli_inpaints_with_a_diffusers_folder(folders, tmp_path):
    from PIL import Image
    Image.new("L", (SIZE, SIZE), 128).save(tmp_path / "image.png")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (2, 2, 6, 6))
    mask.save(tmp_path / "mask.png")
    argv = ["inpaint", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "2", "--n", "1"]
    code, _, err = run_cli([*argv, "--model", str(folders["eps"]), "--out", str(tmp_path / "a")])
    assert code == 0, err
    code, _, err = run_cli([*argv, "--model", str(folders["v"]), "--out", str(tmp_path / "b")])  # no --class
    assert code == 2 and err.count("\n") == 1 and "no 'no class' embedding" in err


# --------------------------------------------------------------------------- hostile and broken folders
class Booby:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def copy_folder(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def refused(folder, match: str) -> str:
    with pytest.raises(UndiffuseError, match=match) as err:
        load_model(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_pickle_only_is_refused_never_opened(folders, tmp_path, monkeypatch):
    folder = copy_folder(folders["eps"], tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    marker = tmp_path / "unpickled"
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Booby(marker)))
    weights.unlink()

    def boom(*a, **k):
        raise AssertionError("something tried to unpickle")
    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    refused(folder, r"diffusion_pytorch_model\.bin is a pickle.*safetensors only")
    code, _, err = run_cli(["sample", str(folder), "--n", "1", "--steps", "1", "--no-progress",
                            "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1 and "pickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_missing_and_misshapen_tensors_are_refused(folders, tmp_path):
    folder = copy_folder(folders["eps"], tmp_path / "missing")
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if k != "conv_out.weight"}, path)
    refused(folder, r"1 missing \(first: conv_out\.weight\)")
    save_file({**tensors, "conv_out.weight": torch.zeros(1, 8, 5, 5)}, path)
    refused(folder, r"'conv_out\.weight' has shape \(1, 8, 5, 5\).*\(1, 8, 3, 3\)")
    save_file({**tensors, "extra.weight": torch.zeros(1)}, path)
    refused(folder, r"1 unexpected \(first: extra\.weight\)")
    path.write_bytes(path.read_bytes()[:200])
    refused(folder, "not a readable safetensors file")


@pytest.mark.parametrize("where, key, value, match", [
    ("unet", "time_embedding_type", "fourier", "time_embedding_type"),
    ("unet", "class_embed_type", "timestep", "class_embed_type"),
    ("unet", "in_channels", 4, "in_channels"),
    ("unet", "out_channels", 2, "out_channels"),
    ("unet", "block_out_channels", [8, 24], "tensor 'down_blocks|do not fit"),
    ("scheduler", "prediction_type", "flow", "prediction_type"),
    ("scheduler", "beta_schedule", "exotic", "beta_schedule"),
    ("scheduler", "rescale_betas_zero_snr", True, "rescale_betas_zero_snr"),
    ("scheduler", "thresholding", True, "thresholding"),
    ("scheduler", "variance_type", "learned_range", "variance_type"),
    ("scheduler", "_class_name", "ScoreSdeVeScheduler", "_class_name"),
    ("scheduler", "trained_betas", [0.5, 2.0], "trained_betas"),
    ("scheduler", "beta_end", 1.5, "outside"),
    ("scheduler", "prediction_type", ["epsilon"], "prediction_type"),
    ("index", "vae", ["diffusers", "AutoencoderKL"], "component 'vae'"),
    ("index", "unet", ["diffusers", "UNet2DConditionModel"], "UNet2DConditionModel"),
])
def test_unsupported_configs_are_refused_naming_the_key(folders, tmp_path, where, key, value, match):
    folder = copy_folder(folders["eps"], tmp_path / "bad")
    path = {"unet": folder / "unet" / "config.json", "scheduler": folder / "scheduler" / "scheduler_config.json",
            "index": folder / "model_index.json"}[where]
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, key: value}))
    refused(folder, match)


def test_broken_json_is_refused(folders, tmp_path):
    folder = copy_folder(folders["eps"], tmp_path / "json")
    (folder / "unet" / "config.json").write_text("{not json")
    refused(folder, "not valid JSON")
    (folder / "model_index.json").write_text("[1, 2]")
    refused(folder, "must hold a JSON object")


def test_without_diffusers_the_error_says_what_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    refused(folders["eps"], r"pip install 'undiffuse\[diffusers\]'")


def test_diffusers_is_imported_only_for_a_diffusers_folder():
    """The optional extra stays optional: the CLI and our own models never import it."""
    import subprocess
    code = ("import sys; from undiffuse import cli; from undiffuse.models import load_model; "
            "load_model('fashion-mnist'); assert 'diffusers' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- undiffuse models out
def tiny_ours(parameterization: str = "v", classes: int = 3, **model) -> LoadedModel:
    """A random undiffuse U-Net (zero-initialised layers made random too, so every weight is tested)."""
    cfg = Config(data=DataConfig(image_size=SIZE, channels=1),
                 model=ModelConfig(**{"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                      "attention_resolutions": [4], "num_heads": 2, "groups": 4, **model}),
                 diffusion=DiffusionConfig(parameterization=parameterization)).validate()
    torch.manual_seed(0)
    net = build_net(cfg, num_classes=classes)
    for p in net.parameters():
        if not p.any():
            nn.init.normal_(p, std=0.2)
    net.eval().requires_grad_(False)
    return LoadedModel(build_denoiser(cfg, net), cfg, [f"c{i}" for i in range(classes)], "tiny", {})


@pytest.mark.parametrize("parameterization, classes", [("v", 3), ("eps", 0)])
def test_export_runs_the_same_in_diffusers(tmp_path, parameterization, classes):
    model = tiny_ours(parameterization, classes)
    out = export_diffusers(model, tmp_path / "exported")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet", use_safetensors=True).eval()
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3]) if classes else None   # 3: the "no class" embedding
    for t in (0.0, 17.0, 523.0, 999.0):
        tt = torch.full((4,), t)
        with torch.no_grad():
            mine, theirs = model.denoiser.net(x, tt, labels), unet(x, tt, class_labels=labels).sample
        assert rel_err(theirs, mine) < EXPORT_RTOL
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.prediction_type == {"v": "v_prediction", "eps": "epsilon"}[parameterization]
    ours_alpha_bar = build_schedule(model.config).alpha_bars
    assert torch.allclose(scheduler.alphas_cumprod.double(), ours_alpha_bar, rtol=1e-5, atol=1e-7)
    diffusers.DDPMPipeline.from_pretrained(out, use_safetensors=True)  # the folder is a whole pipeline

    back = load_model(out)  # and back: same classes, same denoiser
    assert back.class_names == model.class_names and back.config.diffusion.parameterization == parameterization
    sigma = torch.tensor([0.05, 1.0, 9.0, 60.0])
    cond = torch.tensor([0, 2, -1, 1]) if classes else None
    assert rel_err(back.denoiser(x, sigma, cond), model.denoiser(x, sigma, cond)) < EXPORT_RTOL


def test_cli_export_of_a_model_file(tmp_path):
    model = tiny_ours()
    run = tmp_path / "run"
    run.mkdir()
    state = {f"ema.{k}": v for k, v in model.denoiser.net.state_dict().items()}
    save_checkpoint(run / "model.safetensors", state, {"config": to_dict(model.config),
                                                       "class_names": model.class_names})
    code, out, err = run_cli(["export", str(run), "--to", "diffusers", str(tmp_path / "out")])
    assert code == 0, err
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "out" / "model_index.json").is_file() and "wrote" in out
    code, _, err = run_cli(["export", str(run), "--to", "diffusers", str(tmp_path / "out")])
    assert code == 2 and "not an empty folder" in err
    code, _, err = run_cli(["export", str(run), "--to", "onnx", str(tmp_path / "o2")])
    assert code == 2 and "unknown export format" in err


def recipe_model(name: str) -> LoadedModel:
    """A random model of a recipe in configs/ (its architecture is what matters here)."""
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    torch.manual_seed(0)
    net = build_net(cfg, num_classes=10).eval().requires_grad_(False)
    return LoadedModel(build_denoiser(cfg, net), cfg, [str(i) for i in range(10)], name, {})


@pytest.mark.parametrize("make, match", [
    (lambda: recipe_model("fashion-mnist"), r"model\.channel_mult\[0\] = 2, not 1"),  # 8·(2, 4, 8, 13)
    (lambda: tiny_ours("edm"), "diffusion.parameterization = 'edm'"),
    (lambda: tiny_ours(channel_mult=[1, 2, 2], attention_resolutions=[8, 4]), r"head widths \[4, 8\]"),
])
def test_export_refuses_what_does_not_map(tmp_path, make, match):
    with pytest.raises(UndiffuseError, match=match) as err:
        export_diffusers(make(), tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_shipped_model_exports_or_says_why(tmp_path):
    """Whatever ships as "fashion-mnist": it exports and runs the same in diffusers, or one line says why not."""
    model = load_model("fashion-mnist")
    try:
        out = export_diffusers(model, tmp_path / "out")
    except UndiffuseError as err:
        assert "\n" not in str(err) and "does not map" in str(err)
        return
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet", use_safetensors=True).eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([10.0, 700.0]), torch.tensor([3, model.num_classes])
    with torch.no_grad():
        assert rel_err(unet(x, t, class_labels=labels).sample, model.denoiser.net(x, t, labels)) < EXPORT_RTOL
