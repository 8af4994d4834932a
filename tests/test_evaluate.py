"""`undiffuse evaluate`: precision / recall, the feature cache, NFE counting and the command end to end."""

import importlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import run_cli
from undiffuse import samplers
from undiffuse.cli import app, main
from undiffuse.errors import UndiffuseError
from undiffuse.evaluation.evaluate import EvalSettings, evaluate
from undiffuse.evaluation.precision_recall import knn_radii, precision_recall
from undiffuse.evaluation.reference import cached_features
from undiffuse.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_knn_radii_match_brute_force():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cdist(x, x)
    brute = d.sort(dim=1).values[:, 3]   # column 0 is the point itself
    torch.testing.assert_close(knn_radii(x, k=3, chunk=7), brute)


def test_precision_recall_tell_fidelity_from_coverage():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(8, 4, generator=g) * 10
    def draw(modes, n=800):
        return centres[modes[torch.randint(len(modes), (n,), generator=g)]] + torch.randn(n, 4, generator=g)
    real = draw(torch.arange(8))
    p, r = precision_recall(real, draw(torch.arange(8)))
    assert p > 0.85 and r > 0.85                                # the same distribution
    p, r = precision_recall(real, draw(torch.arange(4)))        # half the modes: faithful but not covering
    assert p > 0.85 and 0.35 < r < 0.6
    p, r = precision_recall(real, draw(torch.arange(8)) + 30)   # off the data
    assert p < 0.05 and r < 0.05


def test_feature_cache_computes_once_and_recovers_from_damage(tmp_path):
    images = torch.rand(6, 1, 8, 8)
    calls = []
    def extract(x):
        calls.append(len(x))
        return x.flatten(1).double()
    first = cached_features("k", images, extract, tmp_path)
    again = cached_features("k", images, extract, tmp_path)
    assert calls == [6] and torch.equal(first, again)
    cached_features("k", images + 1, extract, tmp_path)          # other images: another entry
    assert calls == [6, 6]
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    torch.testing.assert_close(cached_features("k", images, extract, tmp_path), first)
    assert calls == [6, 6, 6]


def test_evaluate_command_end_to_end(digits_run, tmp_path, monkeypatch):
    monkeypatch.setenv("UNDIFFUSE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    args = ["evaluate", str(digits_run), "--n", "12", "--steps", "5", "--samplers", "ddim,heun",
            "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "real vs real" in result.output and "n = 12" in result.output
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["n"] == 12 and ev["features"] == "inception" and "no held-out split" in ev["reference"]
    nfe = {(r["sampler"], r["steps"]): r["nfe"] for r in ev["rows"]}
    # Heun: 2 per step, 1 for the last and for steps longer than H_MAX_RK in λ (on this 5-step Karras grid, h = 1.4,
    # 1.8, 2.4, 3.8: one 2-evaluation step)
    grid = load_model(digits_run).sigmas(5).tolist()
    heun = sum(samplers.step_order(a, b, 2, samplers.H_MAX_RK) for a, b in zip(grid, grid[1:]))
    assert heun == 6 and nfe == {("ddim", 5): 2 * 5, ("heun", 5): 2 * heun}   # guided at every σ: both branches
    for row in ev["rows"]:
        s = row["scores"]
        assert s["fid"] > ev["floor"]["fid"] > 0                  # a 4-step model is far from the data
        assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and row["seconds"] > 0
    with Image.open(out / "quality_vs_nfe.png") as im:
        assert im.width > 500
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2   # the two real sets, cached


def test_evaluate_command_samples_on_the_grid_asked_for(digits_run, tmp_path, monkeypatch):
    """--grid overrides the card's (web-UI names too); Heun's NFE follows the grid's step sizes."""
    monkeypatch.setenv("UNDIFFUSE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    args = ["evaluate", str(digits_run), "--n", "12", "--steps", "5", "--samplers", "heun", "--grid", "simple",
            "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trailing grid" in result.output
    model = load_model(digits_run)
    trailing, card = model.sigmas(5, "trailing").tolist(), model.sigmas(5).tolist()
    heun = [sum(samplers.step_order(a, b, 2, samplers.H_MAX_RK) for a, b in zip(g, g[1:])) for g in (trailing, card)]
    assert heun[0] != heun[1]                      # the two grids tell apart by Heun's evaluations
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["grid"] == "trailing" and ev["rows"][0]["nfe"] == 2 * heun[0]   # guided: two evaluations a call


def test_evaluate_scores_class_accuracy_with_the_shipped_classifier():
    model = load_model("fashion-mnist")
    ev = evaluate(model, EvalSettings(samplers=["dpmpp_2m"], steps=[8], n=20, features="classifier"), progress=False)
    row = ev.rows[0]
    assert ev.guidance == model.config.sample.guidance
    assert ev.guidance_interval == tuple(model.config.sample.guidance_interval)  # the card's
    lo, hi = ev.guidance_interval
    inside = sum(lo <= s <= hi for s in model.sigmas(8)[:-1].tolist())  # both branches there, one elsewhere
    assert 0 < inside < 8 and row.nfe == 2 * inside + (8 - inside)
    assert row.accuracy is not None and set(row.per_class) == set(model.class_names)
    assert row.accuracy > 0.6 and ev.floor_accuracy > 0.8       # the shipped model draws what it is asked for
    assert row.scores.fid > 0


def test_evaluate_refuses_bad_settings(digits_run):
    model = load_model(digits_run)
    with pytest.raises(UndiffuseError, match="unknown sampler"):
        evaluate(model, EvalSettings(samplers=["nope"], n=10), progress=False)
    with pytest.raises(UndiffuseError, match="unknown .*grid"):
        evaluate(model, EvalSettings(samplers=["ddim"], n=10, grid="wavy"), progress=False)
    with pytest.raises(UndiffuseError, match="needs 4000 real images"):
        evaluate(model, EvalSettings(n=2000), progress=False)


def test_evaluate_command_rejects_a_bad_step_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "fashion-mnist", "--steps", "5,x"])
    assert exit_.value.code == 2 and "comma-separated integers" in capsys.readouterr().err


def test_evaluate_command_samples_with_the_options_sample_takes(digits_run, tmp_path, monkeypatch):
    """σ range, ρ, x̂0 clipping, ε scaling and CFG rescale reach every row's sampling and the report names them."""
    evaluate_module = importlib.import_module("undiffuse.evaluation.evaluate")   # the module, not its function
    monkeypatch.setenv("UNDIFFUSE_DATA", str(tmp_path / "cache"))
    seen, real_generate = [], evaluate_module.generate
    monkeypatch.setattr(evaluate_module, "generate", lambda model, req, **kw: (seen.append(req), real_generate(
        model, req, **kw))[1])
    fids = []
    for extra in ([], ["--sigma-min", "0.5", "--sigma-max", "10", "--rho", "3", "--clip-x0", "--eps-scale", "1.01",
                       "--guidance-rescale", "0.7"]):
        out = tmp_path / f"eval{len(extra)}"
        result = CliRunner().invoke(app, ["evaluate", str(digits_run), "--n", "12", "--steps", "5", "--samplers",
                                          "ddim", "--out", str(out), "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        fids.append(json.loads((out / "evaluation.json").read_text())["rows"][0]["scores"]["fid"])
    plain, tuned = seen
    assert (plain.sigma_min, plain.sigma_max, plain.rho, plain.clip_x0, plain.eps_scale, plain.guidance_rescale) == \
        (None, None, 7.0, False, 1.0, 0.0)
    assert (tuned.sigma_min, tuned.sigma_max, tuned.rho, tuned.clip_x0, tuned.eps_scale, tuned.guidance_rescale) == \
        (0.5, 10.0, 3.0, True, 1.01, 0.7)
    assert fids[0] != fids[1]                                   # they changed what was drawn
    assert "σ from 10 to 0.5, ρ = 3, x̂0 clipped to [-1, 1], ε̂ divided by 1.01, CFG rescale 0.7" in result.output


def test_evaluate_command_refuses_sampling_options_a_video_model_does_not_take(video_run):
    code, out, err = run_cli(["evaluate", str(video_run), "--eps-scale", "1.01", "--n", "4"])
    assert code != 0 and "--eps-scale: image and sound models only" in out + err


def test_evaluate_command_autoguides_and_counts_the_guides_evaluations(digits_run, tmp_path, monkeypatch):
    """--autoguide replaces the unconditional branch; the guide's calls count in the NFE. Guided by itself, a model
    draws exactly its plain conditional samples (D + w (D − D) = D), at twice the evaluations."""
    monkeypatch.setenv("UNDIFFUSE_DATA", str(tmp_path / "cache"))
    rows = {}
    runs = (("auto", ["--autoguide", str(digits_run), "--guidance", "2.5"]), ("plain", ["--guidance", "1"]))
    for name, extra in runs:
        out = tmp_path / name
        result = CliRunner().invoke(app, ["evaluate", str(digits_run), "--n", "12", "--steps", "5", "--samplers",
                                          "ddim", "--guidance-interval", "0,inf", "--out", str(out), "--no-progress",
                                          *extra])
        assert result.exit_code == 0, result.output
        rows[name] = json.loads((out / "evaluation.json").read_text())["rows"][0]
        if name == "auto":
            assert f"autoguidance by {digits_run}" in result.output
    assert rows["auto"]["nfe"] == 2 * 5 and rows["plain"]["nfe"] == 5
    assert rows["auto"]["scores"]["fid"] == pytest.approx(rows["plain"]["scores"]["fid"], rel=1e-6)
    code, out, err = run_cli(["evaluate", str(digits_run), "--n", "12", "--autoguide", "fashion-mnist"])
    assert code != 0 and "the guide model" in out + err                  # another space / classes: refused
