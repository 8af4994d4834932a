"""Backbones and spaces on the CPU: our U-Net vs DiT in pixel space vs a latent U-Net / DiT.

Run by hand (not in CI), from the repository root:

    .venv/bin/python bench/backbones.py speed --set fashion-mnist --rounds 8
    .venv/bin/python bench/backbones.py speed --set emoji-text --rounds 6
    .venv/bin/python bench/backbones.py quality --seconds 480 --autoencoder ~/runs/fashion-mnist-autoencoder
    .venv/bin/python bench/backbones.py text --seconds 720 --autoencoder ~/runs/emoji-autoencoder

``speed``: one training step = forward + the recipe's loss + backward + fused AdamW under bf16 autocast, on a
fixed random batch of the space's shape (a latent contender sees latents: encoding is done once, before training,
and costs nothing per step). Contenders are interleaved one step at a time, round after round, after 2 warm-up
steps each; the figure is the median. Model FLOPs: ``FlopCounterMode`` on one forward (×3 for a training step);
the fraction is of the best bf16 GEMM measured in the same run (``peers.gemm_peak``).

``text``: cross (PixArt-α) vs joint (SD3) attention to the prompt, the emoji-dit recipe with colour captions
trained from scratch for the same wall time each, scored by bench/text_model.py (hit@k, caption similarity,
colour words).

``quality``: each contender trains from its recipe for the same wall time (``train.max_seconds``), ``--parallel``
of them side by side on an equal share of the cores (nothing else running); then ``undiffuse evaluate`` scores
each (classifier features: FD and the shipped classifier's accuracy on the asked class, n images,
DPM-Solver++(2M), 20 steps, guidance 2) against held-out Fashion-MNIST. Results: Markdown tables on stdout
and merged into --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from undiffuse.checkpoint import load_checkpoint
from undiffuse.config import load_config
from undiffuse.losses import denoising_loss
from undiffuse.models import build_denoiser, build_net, build_schedule, training_sigmas
from undiffuse.nets.cpu import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
TEXT_LENGTH, TEXT_DIM = 24, 384

# contender: (recipe, overrides, space shape (C, H, W) the net sees). Latent shapes are those of an f = 4
# autoencoder with 4 channels (configs/*-autoencoder.toml).
SETS: dict[str, dict[str, tuple[str, list[str], tuple[int, int, int]]]] = {
    "fashion-mnist": {
        "unet (pixels, shipped recipe)": ("fashion-mnist", [], (1, 32, 32)),
        "dit-XS/2 (pixels)": ("fashion-mnist", ["model.backbone='dit'", "model.dit_size='XS'",
                                                "model.patch_size=2", "model.dropout=0.0"], (1, 32, 32)),
        "dit-XS/1 (latent 4×8×8)": ("fashion-mnist", ["model.backbone='dit'", "model.dit_size='XS'",
                                                      "model.patch_size=1", "model.dropout=0.0"], (4, 8, 8)),
        "unet (latent 4×8×8)": ("fashion-mnist", ["model.channel_mult=[2, 3]", "model.attention_resolutions=[4]"],
                                (4, 8, 8)),
    },
    "emoji-text": {
        "unet (pixels 64×64)": ("emoji-text", ["data.image_size=64", "model.channel_mult=[1, 2, 2, 2]"], (3, 64, 64)),
        "unet (latent 4×16×16)": ("emoji-text", ["data.image_size=64", "model.channel_mult=[2, 3]",
                                                 "model.attention_resolutions=[8]"], (4, 16, 16)),
        "dit-XS/2 (latent 4×16×16)": ("emoji-text", ["model.backbone='dit'", "model.dit_size='XS'",
                                                     "model.patch_size=2", "model.dropout=0.0"], (4, 16, 16)),
        "dit-XS/2 joint (latent 4×16×16)": ("emoji-text", ["model.backbone='dit'", "model.dit_size='XS'",
                                                           "model.patch_size=2", "model.dropout=0.0",
                                                           "model.text_attention='joint'"], (4, 16, 16)),
        "dit-M/2 (latent 4×16×16)": ("emoji-text", ["model.backbone='dit'", "model.dit_size='M'",
                                                    "model.patch_size=2", "model.dropout=0.0"], (4, 16, 16)),
        "dit-S/2 (latent 4×16×16)": ("emoji-text", ["model.backbone='dit'", "model.dit_size='S'",
                                                    "model.patch_size=2", "model.dropout=0.0"], (4, 16, 16)),
    },
}


class Step:
    """One contender's training step on a fixed random batch."""

    def __init__(self, recipe: str, overrides: list[str], shape: tuple[int, int, int]):
        cfg = load_config(ROOT / "configs" / f"{recipe}.toml", overrides)
        self.cfg, self.text = cfg, cfg.data.name in ("emoji", "openmoji", "emoji+openmoji", "tuxpaint")
        torch.manual_seed(0)
        self.net = build_net(cfg, 0 if self.text else 10, context_dim=TEXT_DIM if self.text else 0, shape=shape)
        self.denoiser = build_denoiser(cfg, self.net)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        self.x0 = torch.rand(BATCH, *shape, generator=g) * 2 - 1
        self.sigma = training_sigmas(cfg, build_schedule(cfg), BATCH, g).float()
        if self.text:
            self.cond: Any = {"tokens": torch.randn(BATCH, TEXT_LENGTH, TEXT_DIM, generator=g),
                              "mask": torch.arange(TEXT_LENGTH)[None].expand(BATCH, -1) < 10,
                              "pooled": torch.randn(BATCH, TEXT_DIM, generator=g)}
        else:
            self.cond = torch.randint(0, 10, (BATCH,), generator=g)
        self.params = sum(p.numel() for p in self.net.parameters())

    def forward_gflop(self) -> float:
        """GFLOP per image of one forward pass of the network."""
        x = self.x0[:2]
        cond = {k: v[:2] for k, v in self.cond.items()} if self.text else self.cond[:2]
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            self.denoiser(x, self.sigma[:2], cond)
        return fc.get_total_flops() / 2 / 1e9

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = denoising_loss(self.denoiser, self.x0, self.sigma, self.cond,
                                  min_snr_gamma=self.cfg.diffusion.min_snr_gamma or None)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def speed(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from peers import gemm_peak

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    peak = gemm_peak(3)["peak_gflops"]["bf16"]
    steps = {name: Step(*spec) for name, spec in SETS[args.set].items()}
    flops = {name: s.forward_gflop() for name, s in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(2):
        for s in steps.values():
            s()
    for _ in range(args.rounds):
        for name, s in steps.items():
            times[name].append(s())
    rows = {}
    for name, t in times.items():
        img_s = BATCH / statistics.median(t)
        gflops = 3 * flops[name] * img_s
        rows[name] = {"params": steps[name].params, "gflop_per_image": flops[name], "img_per_s": img_s,
                      "gflops": gflops, "of_bf16_peak": gflops / peak}
    print(f"\n{args.set}: bf16 GEMM peak {peak:.0f} GFLOP/s, batch {BATCH}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| contender | params | GFLOP/img fwd | img/s | GFLOP/s | of bf16 peak |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['gflop_per_image']:.3f} | {r['img_per_s']:.1f} | "
              f"{r['gflops']:.0f} | {100 * r['of_bf16_peak']:.0f} % |")
    return {"set": args.set, "peak_bf16_gflops": peak, "rows": rows}


def train_phase(jobs: dict[str, tuple[Path, list[str]]], args: argparse.Namespace) -> bool:
    """Train the contenders unless ``--phase evaluate``; whether they are to be evaluated now."""
    if args.phase in ("all", "train"):
        train_together(jobs, args.parallel, args.cores)
    return args.phase != "train"


def train_together(jobs: dict[str, tuple[Path, list[str]]], parallel: int, cores: int) -> None:
    """Train the runs ``jobs`` (name → (recipe, --set overrides)) ``parallel`` at a time, each on cores // parallel
    threads: contenders that train side by side get the same cores and the same wall time."""
    threads = max(1, cores // parallel)
    names = list(jobs)
    for i in range(0, len(names), parallel):
        procs = []
        for name in names[i:i + parallel]:
            recipe, sets = jobs[name]
            cmd = [sys.executable, "-m", "undiffuse", "train", str(recipe), "--no-progress"]
            for s in [*sets, f"train.threads={threads}"]:
                cmd += ["--set", s]
            procs.append((name, subprocess.Popen(cmd, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})))
        for name, proc in procs:
            if proc.wait():
                raise SystemExit(f"training {name} failed (exit {proc.returncode})")


def last_log(run: Path) -> dict[str, Any]:
    """The last loss line of a run's log.jsonl (its step, img/s, seconds)."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line][-1]


def paired_losses(runs: dict[str, Path]) -> dict[str, dict[int, float]]:
    """The logged training loss of each run at every step all of them logged, as a Markdown table: with the same seed
    the runs see the same batches and noise, so equal steps are a paired comparison."""
    logs = {name: {d["step"]: d["loss"] for d in map(json.loads, (run / "log.jsonl").read_text().splitlines())
                   if "loss" in d} for name, run in runs.items()}
    common = sorted(set.intersection(*(set(log) for log in logs.values())))
    print("\n| step | " + " | ".join(logs) + " |\n|---|" + "---|" * len(logs))
    for step in common:
        print(f"| {step} | " + " | ".join(f"{log[step]:.4f}" for log in logs.values()) + " |")
    return {name: {step: log[step] for step in common} for name, log in logs.items()}


def timed_sets(run: Path, seconds: float) -> list[str]:
    return [f"out_dir='{run}'", f"train.max_seconds={seconds}", "train.steps=1000000", "train.sample_every=0",
            "train.checkpoint_every=500"]


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Train every Fashion-MNIST contender for the same wall time, then evaluate each."""
    out = Path(args.out)
    jobs, runs = {}, {}
    for name, (recipe, overrides, shape) in SETS["fashion-mnist"].items():
        latent = shape[0] != 1
        if latent and not args.autoencoder:
            print(f"skipping {name}: give --autoencoder (a trained configs/fashion-mnist-autoencoder.toml run)")
            continue
        run = out / (name.split(" ")[0].replace("/", "-") + ("-latent" if latent else "-pixels"))
        sets = [*overrides, *timed_sets(run, args.seconds)]
        if latent:
            sets += ["space.kind='latent'", f"space.autoencoder='{args.autoencoder}'"]
        jobs[name], runs[name] = (ROOT / "configs" / f"{recipe}.toml", sets), run
    if not train_phase(jobs, args):
        return {}
    rows = {}
    for name, run in runs.items():
        ev = run / "evaluate"
        subprocess.run([sys.executable, "-m", "undiffuse", "evaluate", str(run), "--features", "classifier",
                        "--samplers", "dpmpp_2m", "--steps", "20", "--n", str(args.n), "--out", str(ev),
                        "--no-progress"], check=True)
        report = json.loads((ev / "evaluation.json").read_text())
        log = last_log(run)
        rows[name] = {"steps": log["step"], "img_per_s": log["img_per_s"], "fd": report["rows"][0]["scores"]["fid"],
                      "accuracy": report["rows"][0]["accuracy"], "floor_fd": report["floor"]["fid"],
                      "evaluation": report}
    print(f"\nFashion-MNIST 32×32, class-conditional: {args.seconds:.0f} s of training each, {args.parallel} side by "
          f"side on {max(1, args.cores // args.parallel)} thread(s) each; FD in the shipped classifier's features and "
          f"its accuracy on the asked class, n = {args.n}, DPM-Solver++(2M) 20 steps, guidance 2 "
          f"(real-vs-real FD floor {next(iter(rows.values()))['floor_fd']:.2f})\n")
    print("| contender | steps | img/s | FD | class accuracy |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['img_per_s']:.1f} | {r['fd']:.2f} | {100 * r['accuracy']:.1f} % |")
    return {"seconds": args.seconds, "n": args.n, "parallel": args.parallel, "rows": rows}


TEXT_ATTENTION = {"cross (PixArt-α)": "cross", "joint (SD3 MM-DiT)": "joint"}


def text_attention(args: argparse.Namespace) -> dict[str, Any]:
    """Cross vs joint attention to the prompt: the emoji-dit recipe (DiT-XS/2, latent, with the colour captions of
    stage 2) trained from scratch for the same wall time each, then scored by bench/text_model.py."""
    out = Path(args.out)
    jobs, runs = {}, {}
    for name, kind in TEXT_ATTENTION.items():
        run = out / f"text-{kind}"
        sets = [f"model.text_attention='{kind}'", "data.recolour=1", f"space.autoencoder='{args.autoencoder}'",
                *timed_sets(run, args.seconds)]
        jobs[name], runs[name] = (ROOT / "configs" / "emoji-dit.toml", sets), run
    evaluate = train_phase(jobs, args)
    losses = paired_losses(runs)
    if not evaluate:
        return {"seconds": args.seconds, "losses": losses}
    rows = {}
    for name, run in runs.items():
        report = run / "text_model.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "text_model.py"), "--model", str(run), "--prompts",
                        str(args.prompts), "--colour-seeds", "2", "--free-grid", str(run / "free.png"),
                        "--json", str(report), "--threads", str(args.cores)], check=True)
        params = sum(v.numel() for k, v in load_checkpoint(run / "model.safetensors")[0].items()
                     if k.startswith("ema."))
        log = last_log(run)
        rows[name] = {"steps": log["step"], "img_per_s": log["img_per_s"], "params": params,
                      **json.loads(report.read_text())}
    print(f"\ntext attention, {args.seconds:.0f} s of training each, {args.parallel} side by side, "
          f"{args.prompts} prompts\n")
    print("| attention | params | steps | img/s | hit@1 | hit@10 | caption sim | colour words |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.1f} M | {r['steps']} | {r['img_per_s']:.1f} | {100 * r['hit1']:.0f} % | "
              f"{100 * r['hitk']:.0f} % | {r['sim_nearest']:.3f} | {100 * r['colour']['followed']:.0f} % |")
    return {"seconds": args.seconds, "prompts": args.prompts, "parallel": args.parallel, "losses": losses,
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--set", choices=sorted(SETS), default="fashion-mnist")
    s.add_argument("--rounds", type=int, default=8)
    s.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("quality")
    q.add_argument("--seconds", type=float, default=600)
    q.add_argument("--n", type=int, default=1000)
    q.add_argument("--autoencoder", default="")
    q.add_argument("--out", default=str(Path.home() / "runs" / "backbones"))
    t = sub.add_parser("text")
    t.add_argument("--seconds", type=float, default=720)
    t.add_argument("--prompts", type=int, default=100)
    t.add_argument("--autoencoder", default=str(Path.home() / "runs" / "emoji-autoencoder"))
    t.add_argument("--out", default=str(Path.home() / "runs" / "backbones"))
    for a in (q, t):
        a.add_argument("--parallel", type=int, default=2, help="contenders trained side by side (same cores each)")
        a.add_argument("--cores", type=int, default=os.cpu_count() or 2)
        a.add_argument("--phase", choices=("all", "train", "evaluate"), default="all",
                       help="train only (the timed part, on quiet cores), evaluate the trained runs only, or both")
    for a in (s, q, t):
        a.add_argument("--json", default="")
    args = p.parse_args()
    res = {"speed": speed, "quality": quality, "text": text_attention}[args.part](args)
    if args.json and res:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {}
        key = f"{args.part}-{getattr(args, 'set', 'emoji' if args.part == 'text' else 'fashion-mnist')}"
        old[key] = {"date": time.strftime("%Y-%m-%d %H:%M"), **res}
        path.write_text(json.dumps(old, indent=2))


if __name__ == "__main__":
    main()
