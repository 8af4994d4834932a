"""train.log: JSONL always, TensorBoard event files and an offline wandb run as extras, a missing extra named in
one line; the linear learning-rate schedule and the time budget of the one training loop."""

import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import pytest

from undiffuse import loggers
from undiffuse.cli import main
from undiffuse.config import load_config
from undiffuse.errors import UndiffuseError
from undiffuse.train import Trainer, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits-smoke.toml"
pytest.importorskip("sklearn")


def tiny(out: Path, *extra: str):
    """The digits recipe, 6 steps, a log line every 2 and a preview grid at step 6."""
    return load_config(DIGITS, [f"out_dir='{out}'", "train.steps=6", "train.log_every=2", "train.sample_every=6",
                                "train.checkpoint_every=6", "train.threads=1", "sample.steps=2", *extra])


def jsonl(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_tensorboard_event_file_holds_the_loss_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny(tmp_path / "run", "train.log=['jsonl', 'tensorboard']"), progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/img_per_s"} <= set(tags["scalars"])
    rows = jsonl(run)  # JSONL is written beside it, the same numbers
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == [2, 4, 6]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
    assert tags["images"] == ["samples"] and [e.step for e in events.Images("samples")] == [6]  # the preview grid


def test_jsonl_alone_is_the_default_and_writes_no_event_files(tmp_path):
    cfg = tiny(tmp_path / "run", "train.sample_every=0")
    assert cfg.train.log == ["jsonl"]
    run = train(cfg, progress=False)
    assert [r["step"] for r in jsonl(run)] == [2, 4, 6] and not (run / "tensorboard").exists()


def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(UndiffuseError, match=r"train.log names wandb, which needs the wandb package: "
                                             r"pip install 'undiffuse\[wandb\]'"):
        Trainer(tiny(tmp_path / "run", "train.log=['wandb']"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(DIGITS), "--no-progress", "--set", f"out_dir='{tmp_path / 'cli'}'",
              "--set", "train.log=['jsonl', 'wandb']"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "pip install 'undiffuse[wandb]'" in err


def test_wandb_gets_the_same_numbers_offline(tmp_path, monkeypatch):
    """wandb's calls, checked with a stand-in module (the wandb package is not a test dependency)."""
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls["init"].append(kw) or Run()
    fake.Image = lambda pixels: ("image", pixels.shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = train(tiny(tmp_path / "run", "train.log=['wandb']"), progress=False)
    (init,) = calls["init"]
    assert init["mode"] == "offline" and init["dir"] == str(run) and init["config"]["train"]["steps"] == 6
    assert init["id"] == (run / "wandb-run-id").read_text().strip() and init["resume"] == "allow"
    scalars = [(step, data["train/loss"]) for step, data in calls["log"] if "train/loss" in data]
    assert scalars == [(r["step"], pytest.approx(r["loss"])) for r in jsonl(run)]
    assert [(step, data["samples"][0]) for step, data in calls["log"] if "samples" in data] == [(6, "image")]
    assert calls["finish"] == 1


def test_real_wandb_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # an optional extra: tested where it is installed
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = train(tiny(tmp_path / "run", "train.log=['wandb']", "train.sample_every=0"), progress=False)
    assert list((run / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("override, message", [
    ("train.log=['csv']", "train.log must be a list of jsonl, tensorboard, wandb"),
    ("train.lr_schedule='cosine'", "train.lr_schedule must be constant or linear"),
    ("train.steps=0", "train.steps must be positive, got 0 (0, no step budget, needs a time budget"),
])
def test_bad_logger_and_budget_settings_are_refused(override, message):
    with pytest.raises(UndiffuseError, match=re.escape(message)):
        load_config(DIGITS, [override])


def test_linear_schedule_decays_over_the_budget():
    cfg = load_config(DIGITS, ["train.lr=1.0", "train.warmup=1", "train.steps=100", "train.lr_schedule='linear'",
                               "train.lr_final=0.1"])
    assert learning_rate(cfg, 0) == 1.0
    assert learning_rate(cfg, 50) == pytest.approx(1 - 0.9 * 0.5)
    assert learning_rate(cfg, 50, done=1.0) == pytest.approx(0.1)  # a time budget spent first
    flat = load_config(DIGITS, ["train.lr=1.0", "train.warmup=1"])
    assert learning_rate(flat, 50) == learning_rate(flat, 19_999) == 1.0


def test_a_time_budget_alone_ends_the_run(tmp_path):
    cfg = tiny(tmp_path / "run", "train.steps=0", "train.max_seconds=1.5", "train.sample_every=0",
               "train.checkpoint_every=10000")
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    assert trainer.step > 0 and 1.5 <= trainer.seconds < 60
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "checkpoints").is_dir()
