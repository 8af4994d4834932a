"""Training throughput of the space-time U-Net (configs/moving-sprites.toml): frames/s, its fraction of the bf16
matmul peak, and what temporal attention costs against temporal convolution.

Contenders, all the recipe's [model] and batch (16 clips × 8 frames of 32×32), bf16 autocast as training runs:
- ``image U-Net per frame``: the same U-Net without temporal layers on the 128 frames (the floor of any video net);
- ``temporal = attention`` (the recipe), ``conv`` and ``both``.
Each step: forward on a fixed noised batch, MSE to the noise, backward, fused AdamW, as bench/train_throughput.py.
Contenders are interleaved one step at a time (``--rounds`` after ``--warmup``), median frames/s. FLOPs:
``FlopCounterMode`` on one forward (2 per multiply-add), a training step = 3 × forward; "of peak" divides by the
best square bf16 GEMM (bench/peers.py ``gemm_peak``), measured in the same run.

    .venv/bin/python bench/video_throughput.py --json bench/results/video-throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import peers  # bench/ is on sys.path when this file runs as a script
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from undiffuse.config import load_config
from undiffuse.models import build_net
from undiffuse.nets.cpu import train_autocast

ROOT = Path(__file__).resolve().parents[1]


class Step:
    """A net, its AdamW and one fixed noised batch of clips (or of their frames, for the image net)."""

    def __init__(self, net: torch.nn.Module, shape: tuple[int, ...], batch: int):
        self.net = net.train()
        self.opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, *shape, generator=g)
        self.eps = torch.randn(self.x.shape, generator=g)
        self.t = torch.rand(batch, generator=g) * 999
        self.labels = torch.randint(0, 10, (batch,), generator=g)

    def forward(self) -> torch.Tensor:
        with train_autocast(True):
            return self.net(self.x, self.t, self.labels)

    def __call__(self) -> None:
        loss = F.mse_loss(self.forward().float(), self.eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def contenders(recipe: Path, clips: int) -> tuple[dict[str, Step], int]:
    cfg = load_config(recipe)
    frames, c, s = cfg.data.frames, cfg.data.channels, cfg.data.image_size
    steps = {"image U-Net per frame": Step(build_net(cfg, 10), (c, s, s), clips * frames)}
    for temporal in ("attention", "conv", "both"):
        cfg.model.temporal = temporal
        steps[f"temporal = {temporal}"] = Step(build_net(cfg, 10, shape=(frames, c, s, s)), (frames, c, s, s), clips)
    return steps, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "moving-sprites.toml")
    ap.add_argument("--clips", type=int, default=16, help="clips per batch (the recipe's batch_size)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = peers.gemm_peak(5)["peak_gflops"]["bf16"]
    steps, frames = contenders(args.recipe, args.clips)
    per_frame_flops = {}
    for name, step in steps.items():
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            step.forward()
        per_frame_flops[name] = fc.get_total_flops() / (args.clips * frames)
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            rates[name].append(args.clips * frames / (time.perf_counter() - t0))
        print(f"  round {r + 1}/{args.rounds}, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    peak_again = peers.gemm_peak(5)["peak_gflops"]["bf16"]
    peak = max(peak, peak_again)
    base = statistics.median(rates["image U-Net per frame"])
    rows = []
    print(f"\n### Video U-Net training (run {time.strftime('%Y-%m-%d %H:%M')}; {args.clips} clips × {frames} frames, "
          f"bf16, {args.threads} threads; bf16 GEMM peak {peak:.0f} GFLOP/s)\n")
    print("| net | parameters | GFLOP / frame fwd | frames/s median | (q1–q3) | vs image net | of bf16 peak |")
    print("|---|---|---|---|---|---|---|")
    for name, step in steps.items():
        med = statistics.median(rates[name])
        q1, _, q3 = statistics.quantiles(rates[name], n=4)
        params = sum(p.numel() for p in step.net.parameters())
        gflop = per_frame_flops[name] / 1e9
        of_peak = 3 * gflop * med / peak
        rows.append({"net": name, "parameters": params, "gflop_per_frame_forward": gflop, "frames_per_s": med,
                     "q1": q1, "q3": q3, "vs_image_net": med / base, "of_bf16_peak": of_peak})
        print(f"| {name} | {params:,} | {gflop:.4f} | {med:.0f} | ({q1:.0f}–{q3:.0f}) | {med / base:.2f}× "
              f"| {100 * of_peak:.1f} % |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "clips": args.clips,
                                         "frames": frames, "threads": args.threads, "bf16_peak_gflops": peak,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
