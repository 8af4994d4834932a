"""Runs that survive faults: signals, kill -9, non-finite steps, unwritable or full disks, hostile files;
and data-parallel training with torchrun (2 CPU processes, gloo) matching one process."""

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from undiffuse import checkpoint
from undiffuse.checkpoint import load_checkpoint, save_checkpoint
from undiffuse.config import load_config
from undiffuse.errors import UndiffuseError
from undiffuse.models import load_model
from undiffuse.train import train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits-smoke.toml"
STEPS = 40
pytest.importorskip("sklearn")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def overrides(out: Path, *extra: str) -> list[str]:
    return [f"out_dir='{out}'", f"train.steps={STEPS}", "train.checkpoint_every=5", "train.log_every=1",
            "train.threads=1", "train.sample_every=0", "data.flip=true", *extra]


def cli(out: Path, *extra: str, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "undiffuse", "train", str(DIGITS), "--no-progress"]
    for o in overrides(out, *extra):
        args += ["--set", o]
    return args + (["--resume"] if resume else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of a run that was never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(load_config(DIGITS, overrides(out)), progress=False)
    return load_file(out / "checkpoints" / "latest.safetensors")


def wait_for(path: Path, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)


def same_weights(a: dict, b: dict) -> bool:
    keys = [k for k in a if k.startswith(("model.", "ema."))]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_checkpoint_and_resume_matches(tmp_path, reference, sig):
    out = tmp_path / "run"
    child = subprocess.Popen(cli(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "log.jsonl")
    time.sleep(random.Random(sig).uniform(0.0, 0.5))
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.fail("the run finished before the signal; make it longer")
    assert child.returncode == 130 and "Traceback" not in err
    assert f"stopped by {sig.name} at step" in err and "--resume" in err.strip().splitlines()[-1]
    step = load_checkpoint(out / "checkpoints" / "latest.safetensors")[1]["step"]
    assert 0 < step < STEPS
    assert subprocess.run(cli(out, resume=True), env=ENV, capture_output=True).returncode == 0
    assert same_weights(load_file(out / "checkpoints" / "latest.safetensors"), reference)


def test_kill_9_at_random_moments_then_resume_matches(tmp_path, reference):
    out = tmp_path / "run"
    rng = random.Random(7)
    for attempt in range(3):  # kill it up to three times, at a random moment after its first checkpoint
        child = subprocess.Popen(cli(out, resume=attempt > 0), env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        if attempt == 0:
            wait_for(out / "checkpoints" / "latest.safetensors")
        time.sleep(rng.uniform(0.2, 1.5))
        child.kill()
        child.wait()
        load_checkpoint(out / "checkpoints" / "latest.safetensors")  # always intact
    result = subprocess.run(cli(out, resume=True), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not list((out / "checkpoints").glob(".*.tmp"))  # half-written files of killed runs are cleared
    assert same_weights(load_file(out / "checkpoints" / "latest.safetensors"), reference)


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    import undiffuse.train as train_module
    real = train_module.denoising_loss
    bad_steps: set[int] = {3, 4}
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] in bad_steps else value

    monkeypatch.setattr(train_module, "denoising_loss", loss)
    out = train(load_config(DIGITS, overrides(tmp_path / "a", "train.steps=10")), progress=False)
    meta = load_checkpoint(out / "model.safetensors")[1]
    assert meta["skipped"] == 2 and meta["step"] == 10 and meta["ema_updates"] == 8
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in log][2:5] == [1, 2, 2]

    bad_steps.update(range(12, 100))  # from the 12th step on every step is non-finite
    calls["n"] = 0
    with pytest.raises(UndiffuseError, match=r"4 steps in a row had a non-finite loss or gradient .*"
                                             r"last good checkpoint is .*latest.safetensors"):
        train(load_config(DIGITS, overrides(tmp_path / "b", "train.max_bad_steps=4")), progress=False)
    kept = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.safetensors")[1]
    assert kept["step"] == 10 and kept["skipped"] == 2   # steps 3 and 4, before the streak


def test_unwritable_run_folder_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UndiffuseError, match="cannot write to the run folder .*a-file/run"):
        train(load_config(DIGITS, overrides(blocker / "run")), progress=False)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UndiffuseError, match="cannot write to the run folder"):
            train(load_config(DIGITS, overrides(locked / "run")), progress=False)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real, saves = checkpoint.save_file, {"n": 0}

    def save_file(tensors, path, metadata=None):
        saves["n"] += 1
        if saves["n"] == 3:
            with open(path, "wb") as f:          # half a file, then the disk is full
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(UndiffuseError, match="could not write checkpoint .*step_00000015.*No space left on device"):
        train(load_config(DIGITS, overrides(out)), progress=False)
    assert load_checkpoint(out / "checkpoints" / "latest.safetensors")[1]["step"] == 10
    assert not (out / "checkpoints" / "step_00000015.safetensors").exists()


# --------------------------------------------------------------------------- hostile files
def test_hostile_checkpoints_are_refused_naming_the_problem(tmp_path):
    run = tmp_path / "run"
    train(load_config(DIGITS, overrides(run, "train.steps=2")), progress=False)
    good = run / "model.safetensors"
    tensors, meta = load_checkpoint(good)
    cases = {}
    raw = good.read_bytes()
    cases["truncated"] = (raw[: len(raw) // 2], "not a readable safetensors checkpoint")
    cases["garbage"] = (os.urandom(4096), "not a readable safetensors checkpoint")
    cases["pickle"] = (pickle.dumps({"ema.inp.weight": [1.0]}), "not a readable safetensors checkpoint")
    for name, (content, message) in cases.items():
        bad = tmp_path / name / "model.safetensors"
        bad.parent.mkdir()
        bad.write_bytes(content)
        with pytest.raises(UndiffuseError, match=message):
            load_model(bad)
    key = next(k for k in tensors if k.endswith("inp.weight"))
    edits = {"missing": ({k: v for k, v in tensors.items() if k != key}, f"tensor {key[4:]!r} is missing"),
             "shape": ({**tensors, key: tensors[key][:1]}, f"tensor {key[4:]!r} has shape"),
             "extra": ({**tensors, "ema.evil": torch.zeros(1)}, "unexpected tensor 'evil'"),
             "dtype": ({**tensors, key: tensors[key].to(torch.int32)}, f"tensor {key[4:]!r} has dtype torch.int32"),
             "nan": ({**tensors, key: tensors[key] * float("nan")}, f"tensor {key[4:]!r} contains inf or NaN")}
    for name, (content, message) in edits.items():
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, content, meta)
        with pytest.raises(UndiffuseError, match=message):
            load_model(path)
    bad_meta = tmp_path / "config.safetensors"
    save_checkpoint(bad_meta, tensors, {**meta, "config": {**meta["config"], "model": {"channels": "many"}}})
    with pytest.raises(UndiffuseError, match="model.channels must be of type int"):
        load_model(bad_meta)


# --------------------------------------------------------------------------- data parallel
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_processes_match_one(tmp_path):
    extra = ("train.steps=6", "model.dropout=0.0", "train.bf16=false", "train.batch_size=32")
    one = tmp_path / "one"
    train(load_config(DIGITS, overrides(one, *extra)), progress=False)
    two = tmp_path / "two"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    args = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "undiffuse", "train", str(DIGITS),
            "--no-progress"]
    for o in overrides(two, *extra):
        args += ["--set", o]
    result = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_file(one / "checkpoints" / "latest.safetensors"), load_file(two / "checkpoints" / "latest.safetensors")
    keys = [k for k in a if k.startswith(("model.", "ema."))]
    for k in keys:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    start = load_file(one / "checkpoints" / "step_00000005.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in keys)   # the compared weights did move
    meta = load_checkpoint(two / "checkpoints" / "latest.safetensors")[1]
    assert meta["world_size"] == 2 and meta["step"] == 6
    log = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))   # one writer: no line twice
