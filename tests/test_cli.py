"""The ``undiffuse`` command: the demo end to end on a tiny budget, the sampler list, one-line errors."""

import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from undiffuse import samplers
from undiffuse.cli import app, main
from undiffuse.images import read_params


def test_demo_writes_a_png_and_its_numbers(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--data", "eight_gaussians", "--seconds", "20", "--train-steps", "40",
                                      "--steps", "6", "--n", "300", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "energy" in result.output and "a fresh data set" in result.output
    with Image.open(out / "demo.png") as png:
        png.load()
        assert png.format == "PNG" and png.width > 1000 and png.height > 400
        assert "Sampler: DPM++ 2M" in png.text["parameters"]  # A1111's name of dpmpp_2m
    assert read_params(out / "demo.png")["train_steps"] == 40
    record = json.loads((out / "demo.json").read_text())
    assert record["train_steps"] == 40 and set(record["metrics"]["energy distance"]) == {
        "generated", "fresh data", "noise"}


def test_samplers_lists_every_registered_sampler():
    result = CliRunner().invoke(app, ["samplers"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines()[1:]]
    assert listed == samplers.names()


def test_user_errors_are_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--sampler", "nope", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown sampler 'nope'; known: ddpm") and err.count("\n") == 1


def test_python_dash_m_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "undiffuse", "demo", "--data", "spiral"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown toy data set 'spiral'; known: two_moons, swiss_roll, eight_gaussians, checkerboard"]
