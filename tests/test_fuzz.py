"""Fuzzing the inputs users type: config overrides and CLI arguments only ever give the one-line
``error: …`` (or work), never a traceback."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import run_cli
from typer.testing import CliRunner

from undiffuse import config as config_module
from undiffuse.cli import app
from undiffuse.config import load_config
from undiffuse.errors import UndiffuseError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits-smoke.toml"
pytest.importorskip("sklearn")

SECTIONS = {"data": config_module.DataConfig, "model": config_module.ModelConfig,
            "diffusion": config_module.DiffusionConfig, "train": config_module.TrainConfig,
            "sample": config_module.SampleConfig}
KEYS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)] + ["name", "out_dir"]
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + "x"),
                 st.text(alphabet="abc._=[] ", max_size=10))
values = st.one_of(st.integers(-10**9, 10**9).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.text(max_size=10).map(json.dumps), st.text(max_size=10),
                   st.sampled_from(["true", "false", "[1, 2]", "[]", "{}", "inf", "nan", "-0", "[0]", "1e400",
                                    "'v'", "'edm'", "'karras'", "[1, 2, 3, 4, 5, 6, 7, 8]"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_config_overrides_load_or_fail_in_one_line(pairs):
    try:
        cfg = load_config(DIGITS, [f"{k}={v}" for k, v in pairs])
    except UndiffuseError as err:
        assert "\n" not in str(err) and str(err)
    else:
        assert cfg.train.steps > 0 and cfg.train.lr > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    result = CliRunner().invoke(app, ["train", str(DIGITS), "--no-progress", "--set", f"out_dir='{run}'",
                                      "--set", "train.steps=2"])
    assert result.exit_code == 0, result.output
    return run


small_ints = st.one_of(st.integers(-3, 3).map(str), st.text(max_size=4))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4))
options = st.fixed_dictionaries({}, optional={
    "--n": small_ints, "--steps": small_ints, "--seed": st.integers(-5, 2**40).map(str),
    "--sampler": st.one_of(st.sampled_from(["ddim", "heun", "dpmpp_2m", "adaptive", "unipc"]), st.text(max_size=6)),
    "--grid": st.one_of(st.sampled_from(["karras", "leading", "trailing", "exponential"]), st.text(max_size=6)),
    "--class": st.one_of(st.integers(-2, 12).map(str), st.text(max_size=6)), "--guidance": floats,
    "--bogus": st.just("1")})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options)
def test_sample_arguments_work_or_fail_in_one_line(tiny_run, tmp_path, opts):
    argv = ["sample", str(tiny_run), "--out", str(tmp_path / "out"), "--no-progress"]
    for k, v in opts.items():
        argv += [k, v]
    code, out, err = run_cli(argv)
    message = err.strip()
    assert "Traceback" not in message
    if code == 0:
        assert "sampled" in out
        assert math.isfinite(float(opts.get("--guidance", "2")))   # a NaN scale is refused, not drawn with
    else:
        assert code == 2 and message.startswith("error: ") and len(message.splitlines()) == 1, message
