"""Configs, checkpoints and the training loop: end to end, exact resume, atomic writes."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from undiffuse import samplers
from undiffuse.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from undiffuse.config import load_config
from undiffuse.errors import UndiffuseError
from undiffuse.guidance import CFGDenoiser
from undiffuse.models import load_model
from undiffuse.train import DataOrder, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits-smoke.toml"
pytest.importorskip("sklearn")


def digits_config(out: Path, *extra: str):
    return load_config(DIGITS, [f"out_dir='{out}'", "train.steps=12", "train.checkpoint_every=6",
                                "train.log_every=3", *extra])


# --------------------------------------------------------------------------- configs
def test_every_recipe_loads():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        overrides = ["data.path='x'"] if "folder" in path.name else []
        cfg = load_config(path, overrides)
        assert (cfg.train.steps > 0 or cfg.train.max_seconds > 0) and cfg.name   # a step or a time budget


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "unknown config key train.stepz"),
    ("train.steps=-5", "train.steps must be positive"),
    ("train.lr='fast'", "train.lr must be of type float"),
    ("data.image_size=9", "divisible by the U-Net.s down-sampling factor 2"),
    ("model.channel_mult=['a']", r"model.channel_mult\[0\] must be of type int"),
    ("diffusion.parameterization='score'", "eps, x0, v or edm"),
    ("oops", "section.key=value"),
])
def test_bad_configs_are_refused_naming_the_field(override, message):
    with pytest.raises(UndiffuseError, match=message):
        load_config(DIGITS, [override])


def test_overrides_parse_toml_values():
    cfg = load_config(DIGITS, ["train.lr=3e-4", "model.channel_mult=[1, 2]", "data.flip=true", "name=abc"])
    assert cfg.train.lr == 3e-4 and cfg.model.channel_mult == [1, 2] and cfg.data.flip and cfg.name == "abc"


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_atomic_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.arange(4.0)}, {"step": 1})
    tensors, meta = load_checkpoint(path)
    assert torch.equal(tensors["a"], torch.arange(4.0)) and meta == {"step": 1}

    import undiffuse.checkpoint as ck
    def crash(tensors, filename, metadata):  # dies half-way through writing the new file
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": torch.zeros(4)}, {"step": 2})
    tensors, meta = load_checkpoint(path)  # the previous checkpoint is intact, no temp file left
    assert meta == {"step": 1} and list(tmp_path.iterdir()) == [path]


def test_garbage_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(UndiffuseError, match="not a readable safetensors checkpoint"):
        load_checkpoint(bad)
    net = torch.nn.Linear(3, 2)
    with pytest.raises(UndiffuseError, match="'bias' is missing"):
        load_module_state(net, {"weight": torch.zeros(2, 3)})
    with pytest.raises(UndiffuseError, match=r"'weight' has shape \(3, 3\)"):
        load_module_state(net, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)})


def test_data_order_is_a_permutation_per_epoch():
    order = DataOrder(10, seed=3)
    first = order.indices(0, 10)
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(order.indices(4, 3), first[4:7])
    assert sorted(order.indices(10, 10).tolist()) == list(range(10))


# --------------------------------------------------------------------------- training
def test_train_checkpoint_sample_end_to_end(tmp_path):
    out = train(digits_config(tmp_path / "run"), progress=False)
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 12
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6, 9, 12] and all(r["loss"] > 0 for r in log)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["best.safetensors", "latest.safetensors", "step_00000006.safetensors", "step_00000012.safetensors"]
    losses = {n: load_checkpoint(out / "checkpoints" / f"step_000000{n:02d}.safetensors")[1]["loss"] for n in (6, 12)}
    best = load_checkpoint(out / "checkpoints" / "best.safetensors")[1]
    assert best["loss"] == min(losses.values()) and best["step"] == min(losses, key=losses.get)
    model = load_model(out)
    assert model.class_names == [str(d) for d in range(10)]
    sigmas = model.sigmas(5)
    gens = samplers.make_generators(range(4))
    x = samplers.randn((4, 1, 8, 8), gens) * float(sigmas[0])
    images = samplers.get("dpmpp_2m")(CFGDenoiser(model.denoiser, 2.0), x, sigmas,
                                      cond=torch.tensor([0, 1, 2, 3]), generator=gens)
    assert images.shape == (4, 1, 8, 8) and bool(torch.isfinite(images).all())


def test_resume_is_bit_identical(tmp_path):
    extra = ("train.grad_accum=2", "data.flip=true", "model.dropout=0.1")
    train(digits_config(tmp_path / "a", *extra), progress=False)
    train(digits_config(tmp_path / "b", *extra, "train.steps=6"), progress=False)  # "interrupted" at 6
    train(digits_config(tmp_path / "b", *extra), resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "a" / "model.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume_and_resume_checks_config(tmp_path):
    train(digits_config(tmp_path / "r", "train.steps=6"), progress=False)
    with pytest.raises(UndiffuseError, match="already holds a run; pass --resume"):
        Trainer(digits_config(tmp_path / "r"))
    with pytest.raises(UndiffuseError, match=r"the \[model\] section differs .*\(model\.channels\)"):
        Trainer(digits_config(tmp_path / "r", "model.channels=64"), resume=True)
    shutil.rmtree(tmp_path / "r" / "checkpoints")
    with pytest.raises(UndiffuseError, match="nothing to resume"):
        Trainer(digits_config(tmp_path / "r"), resume=True)


def test_out_dir_under_home_is_expanded_for_training_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    train(digits_config(Path("~/runs/r"), "train.steps=6"), progress=False)  # a quoted '~' reaches the config
    assert (tmp_path / "runs" / "r" / "checkpoints" / "latest.safetensors").exists()
    assert not (tmp_path / "~").exists()
    assert Trainer(digits_config(Path("~/runs/r")), resume=True).step == 6


def test_resume_of_a_checkpoint_written_before_a_config_key_existed(tmp_path):
    """A key added to the config since the checkpoint was written takes its default: the run still resumes."""
    train(digits_config(tmp_path / "r", "train.steps=6"), progress=False)
    latest = tmp_path / "r" / "checkpoints" / "latest.safetensors"
    tensors, meta = load_checkpoint(latest)
    del meta["config"]["data"]["stride"]          # as written before data.stride existed
    save_checkpoint(latest, tensors, meta)
    trainer = Trainer(digits_config(tmp_path / "r"), resume=True)
    assert trainer.step == 6


def test_image_folder_with_broken_files_trains_and_names_them(tmp_path):
    from PIL import Image
    for cls, value in (("dark", 40), ("light", 220)):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (12, 10), (value, value + i, value)).save(tmp_path / "images" / cls / f"{i}.png")
    (tmp_path / "images" / "dark" / "empty.png").write_bytes(b"")
    (tmp_path / "images" / "light" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = load_config(ROOT / "configs" / "image-folder.toml", [
        f"data.path='{tmp_path / 'images'}'", f"out_dir='{tmp_path / 'run'}'", "data.image_size=8",
        "model.channels=16", "model.channel_mult=[1, 2]", "model.attention_resolutions=[]", "model.groups=8",
        "train.steps=2", "train.batch_size=4", "train.sample_every=0", "train.checkpoint_every=2"])
    out = train(cfg, progress=False)
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "skipped 2 of 14 files" in first["data"]
    assert "empty.png" in first["data"] and "corrupt.png" in first["data"]
    assert load_model(out).class_names == ["dark", "light"]


def test_init_fine_tunes_from_a_trained_model_and_refuses_another_network(tmp_path):
    train(digits_config(tmp_path / "base", "train.steps=6"), progress=False)
    base, _ = load_checkpoint(tmp_path / "base" / "model.safetensors")
    tuned = Trainer(digits_config(tmp_path / "tuned", f"train.init='{tmp_path / 'base'}'", "data.limit=200",
                                  "train.lr=1e-3"), progress=False)
    start = tuned.net.state_dict()
    assert tuned.step == 0 and all(torch.equal(start[k], base[f"ema.{k}"]) for k in start)
    assert all(torch.equal(v, start[k]) for k, v in tuned.ema.model.state_dict().items())
    with pytest.raises(UndiffuseError, match=r"train.init: .* another network \(model.channels differ\)"):
        Trainer(digits_config(tmp_path / "other", f"train.init='{tmp_path / 'base'}'", "model.channels=64"))
