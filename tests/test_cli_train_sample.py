"""`undiffuse train` and `undiffuse sample` end to end, and their one-line errors."""

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from undiffuse.cli import app, main
from undiffuse.images import read_params

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sklearn")


def test_train_then_sample(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=8",
                                      "--set", "train.checkpoint_every=4"])
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").is_file() and (run / "config.json").is_file()
    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "12", "--steps", "4", "--seed", "5",
                                      "--sampler", "heun", "--guidance", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    singles = sorted(out.glob("0*.png"))
    assert len(singles) == 12 and (out / "grid.png").is_file()
    with Image.open(out / "grid.png") as im:  # one column per class, ×2, under a strip naming the classes
        assert im.size == (2 * (10 * 10 + 2), 2 * (2 * 10 + 2) + 16)
        assert im.convert("L").crop((0, 0, im.width, 16)).getextrema()[0] < 128   # the names are drawn
    with Image.open(singles[3]) as im:
        assert im.size == (8, 8)
    params = read_params(singles[3])
    assert params["seed"] == 8 and params["sampler"] == "heun" and params["steps"] == 4
    assert params["class"] == "3" and params["guidance"] == 3.0 and params["grid"] == "karras"
    # the same seed gives the same image, whatever else is in the batch
    out2 = tmp_path / "again"
    CliRunner().invoke(app, ["sample", str(run), "--n", "1", "--steps", "4", "--seed", "8", "--class", "3",
                             "--sampler", "heun", "--guidance", "3", "--out", str(out2), "--no-progress"])
    with Image.open(singles[3]) as a, Image.open(next(out2.glob("0*.png"))) as b:
        assert a.tobytes() == b.tobytes()


def test_sample_defaults_come_from_the_model_card(tmp_path):
    run = tmp_path / "run"
    card = ["--set", "sample.sampler='euler'", "--set", "sample.steps=3", "--set", "sample.grid='exponential'",
            "--set", "sample.guidance=1.5"]
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=2", *card])
    assert result.exit_code == 0, result.output
    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0 and "with euler, 3 steps" in result.output, result.output
    params = read_params(sorted(out.glob("0*.png"))[0])
    assert (params["sampler"], params["steps"], params["grid"], params["guidance"]) == ("euler", 3, "exponential", 1.5)
    result = CliRunner().invoke(app, ["sample", str(run), "--n", "1", "--steps", "2", "--sampler", "ddim",
                                      "--out", str(out), "--no-progress"])  # given options win over the card
    assert result.exit_code == 0 and "with ddim, 2 steps" in result.output, result.output


@pytest.mark.parametrize("argv, message", [
    (["sample", "no-such-model"], "error: no model 'no-such-model'"),
    (["train", "missing.toml"], "error: config file not found: missing.toml"),
    (["train", str(ROOT / "configs" / "digits-smoke.toml"), "--set", "train.steps=-1"],
     "error: train.steps must be positive, got -1"),
])
def test_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip() == err.strip().splitlines()[0]
    assert err.startswith(message) and "Traceback" not in err
