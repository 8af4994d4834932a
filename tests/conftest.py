"""Fixtures shared by several test files."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from undiffuse.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A class-conditional digits model trained for 4 steps: enough to sample and score, in seconds."""
    run = tmp_path_factory.mktemp("digits") / "run"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=4"])
    assert result.exit_code == 0, result.output
    return run
