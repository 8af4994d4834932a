"""Copy a finished run's EMA weights into the package as a shipped model, with a config.json card.

    .venv/bin/python scripts/ship_model.py runs/fashion-mnist fashion-mnist \
        --command "undiffuse train configs/fashion-mnist.toml" --seconds 7800
    .venv/bin/python scripts/ship_model.py runs/fashion-mnist-fast fashion-mnist-fast \
        --command "undiffuse train configs/fashion-mnist-fast.toml" --set sample.steps=4
    .venv/bin/python scripts/ship_model.py --card-only fashion-mnist --set sample.guidance=4.0

Writes src/undiffuse/pretrained/NAME/model.safetensors (the run's model.safetensors, or the EMA part
of its latest checkpoint; a latent model's autoencoder with it), its floating-point tensors in bf16 (sampling
runs the network in bf16 anyway; loading casts them back to fp32), and config.json: the resolved config, class
names, steps, training time, hardware and the command, so that ``undiffuse sample NAME`` finds it and anyone
can re-make it. ``--card-only`` changes a shipped model's card (``--set``, sample settings measured after training)
in its config.json and its weights' header alike, the weights and the training record as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import torch

from undiffuse.data import emoji, openmoji, tuxpaint
from undiffuse.checkpoint import group, load_checkpoint, prefixed, save_checkpoint
from undiffuse.config import apply_overrides
from undiffuse.model_files import PRETRAINED_DIR


DATA = {"fashion_mnist": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence), Debian's dataset-fashion-mnist",
        "emoji": emoji.ATTRIBUTION, "tuxpaint": tuxpaint.ATTRIBUTION, "openmoji": openmoji.ATTRIBUTION,
        "emoji+openmoji": f"{emoji.ATTRIBUTION}; {openmoji.ATTRIBUTION}",
        "spoken_digits": "undiffuse.data.spoken_digits: speech synthesised offline with espeak-ng "
                         "voices and Piper's en_US-joe-medium voice",
        "moving_sprites": "undiffuse.data.moving_sprites: Fashion-MNIST garments (Xiao, Rasul & Vollgraf 2017, MIT "
                          "licence) moving on a canvas"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def recard(out: Path, overrides: list[str]) -> None:
    """Apply ``overrides`` to the shipped model in ``out``: its config.json and its weights' header say the same."""
    if not (out / "config.json").is_file():
        raise SystemExit(f"error: no shipped model in {out}")
    tensors, meta = load_checkpoint(out / "model.safetensors")
    meta["config"] = apply_overrides(meta["config"], overrides)
    card = json.loads((out / "config.json").read_text())
    card["config"] = meta["config"]
    save_checkpoint(out / "model.safetensors", tensors, meta)
    (out / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"changed the card of {out}: {', '.join(overrides) or 'nothing'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="the run folder (not with --card-only)")
    ap.add_argument("name")
    ap.add_argument("--card-only", action="store_true", help="only apply --set to the shipped model NAME's card")
    ap.add_argument("--command", help="the exact command that trained the run")
    ap.add_argument("--seconds", type=float, default=None, help="training wall time (default: from the run)")
    ap.add_argument("--hardware", default=None, help="default: this machine's CPU and core count")
    ap.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: bf16, half the size)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the card, e.g. --set sample.steps=1 (sample settings measured after training)")
    args = ap.parse_args()
    if args.card_only:
        if args.run is not None:
            raise SystemExit("error: --card-only changes a shipped model's card: give NAME and --set, not a run")
        recard(PRETRAINED_DIR / args.name, args.set)
        return
    if args.run is None or not args.command:
        raise SystemExit("error: give the RUN folder, the NAME to ship it as and --command")

    source = args.run / "model.safetensors"
    if not source.is_file():
        source = args.run / "checkpoints" / "latest.safetensors"
    tensors, meta = load_checkpoint(source)
    ema = group(tensors, "ema")
    if not ema:
        raise SystemExit(f"error: {source} holds no EMA weights")
    meta = {k: meta[k] for k in ("config", "step", "class_names", "dim", "context_dim", "seconds", "autoencoder")
            if k in meta}
    weights = {**prefixed(ema, "ema"), **prefixed(group(tensors, "autoencoder"), "autoencoder")}
    if not args.fp32:
        weights = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    meta["config"] = apply_overrides(meta["config"], args.set)
    meta["config"]["out_dir"] = ""  # where it was trained is no part of the model
    if meta["config"]["train"].get("init"):  # a fine-tune names the run it started from as its recipe does
        meta["config"]["train"]["init"] = f"runs/{Path(meta['config']['train']['init']).name}"
    if "autoencoder" in meta:  # a latent model carries its autoencoder: name it as its recipe does, not by a path
        name = meta["autoencoder"]["config"]["name"]
        meta["config"]["space"]["autoencoder"] = f"runs/{name}"
        meta["autoencoder"]["source"] = name
        meta["autoencoder"]["config"]["out_dir"] = ""
    # the run may have been stopped at a checkpoint: the model is the recipe run for that many steps
    # (exactly so with the constant learning rate after warm-up)
    meta["config"]["train"]["steps"] = meta["step"]
    seconds = args.seconds if args.seconds is not None else meta.get("seconds")
    if seconds is not None:
        meta["seconds"] = seconds   # the weights' header and the card say the same
    card = {**meta, "training": {
        "command": args.command, "steps": meta["step"], "seconds": seconds,
        "hardware": args.hardware or f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "date": str(date.today()),
        "data": DATA.get(meta["config"]["data"]["name"], meta["config"]["data"]["name"])}}
    out = PRETRAINED_DIR / args.name
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.safetensors", weights, meta)
    (out / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    size = (out / "model.safetensors").stat().st_size / 2**20
    print(f"shipped {source} (step {meta['step']}) as {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
