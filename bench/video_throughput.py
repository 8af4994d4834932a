"""Training throughput of the space-time U-Net (configs/moving-sprites.toml): frames/s, its fraction of the bf16
matmul peak, and what temporal attention costs against temporal convolution.

Contenders, all the recipe's [model] and batch (16 clips × 8 frames of 32×32), in the precision training picks on
this machine (``--precision auto``: bf16 autocast where the CPU has native bf16, else fp32):
- ``image U-Net per frame``: the same U-Net without temporal layers on the 128 frames (the floor of any video net);
- ``temporal = attention``, ``conv`` (the recipe) and ``both``.
Each step: forward on a fixed noised batch, MSE to the noise, backward, fused AdamW, as bench/train_throughput.py.
Contenders are interleaved one step at a time (``--rounds`` after ``--warmup``), median frames/s. FLOPs:
``FlopCounterMode`` on one forward (2 per multiply-add), a training step = 3 × forward; "of peak" divides by the
best square GEMM of that precision (bench/peers.py ``gemm_peak``), measured in the same run.

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
from undiffuse.nets.cpu import PRECISIONS, native_bf16, resolve_precision, train_autocast

ROOT = Path(__file__).resolve().parents[1]


class Step:
    """A net, its AdamW and one fixed noised batch of clips (or of their frames, for the image net)."""

    def __init__(self, net: torch.nn.Module, shape: tuple[int, ...], batch: int, bf16: bool):
        self.net = net.train()
        self.bf16 = bf16
        self.opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, *shape, generator=g)
        self.eps = torch.randn(self.x.shape, generator=g)
        self.t = torch.rand(batch, generator=g) * 999
        self.labels = torch.randint(0, 10, (batch,), generator=g)

    def forward(self) -> torch.Tensor:
        with train_autocast(self.bf16):
            return self.net(self.x, self.t, self.labels)

    def __call__(self) -> None:
        loss = F.mse_loss(self.forward().float(), self.eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def contenders(recipe: Path, clips: int, bf16: bool) -> tuple[dict[str, Step], int]:
    cfg = load_config(recipe)
    frames, c, s = cfg.data.frames, cfg.data.channels, cfg.data.image_size
    steps = {"image U-Net per frame": Step(build_net(cfg, 10), (c, s, s), clips * frames, bf16)}
    for temporal in ("attention", "conv", "both"):
        cfg.model.temporal = temporal
        net = build_net(cfg, 10, shape=(frames, c, s, s))
        steps[f"temporal = {temporal}"] = Step(net, (frames, c, s, s), clips, bf16)
    return steps, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "configs" / "moving-sprites.toml")
    ap.add_argument("--clips", type=int, default=16, help="clips per batch (the recipe's batch_size)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto: bf16 where the CPU has native bf16 (as training picks), else fp32")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision)
    peak = peers.gemm_peak(5, precisions=(precision,))["peak_gflops"][precision]
    steps, frames = contenders(args.recipe, args.clips, precision == "bf16")
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
    peak_again = peers.gemm_peak(5, precisions=(precision,))["peak_gflops"][precision]
    peak = max(peak, peak_again)
    base = statistics.median(rates["image U-Net per frame"])
    rows = []
    print(f"\n### Video U-Net training (run {time.strftime('%Y-%m-%d %H:%M')}; {args.clips} clips × {frames} frames, "
          f"{precision}, {args.threads} threads; {precision} GEMM peak {peak:.0f} GFLOP/s)\n")
    print("| net | parameters | GFLOP / frame fwd | frames/s median | (q1–q3) | vs image net | of peak |")
    print("|---|---|---|---|---|---|---|")
    for name, step in steps.items():
        med = statistics.median(rates[name])
        q1, _, q3 = statistics.quantiles(rates[name], n=4)
        params = sum(p.numel() for p in step.net.parameters())
        gflop = per_frame_flops[name] / 1e9
        of_peak = 3 * gflop * med / peak
        rows.append({"net": name, "parameters": params, "gflop_per_frame_forward": gflop, "frames_per_s": med,
                     "q1": q1, "q3": q3, "vs_image_net": med / base, "of_peak": of_peak})
        print(f"| {name} | {params:,} | {gflop:.4f} | {med:.0f} | ({q1:.0f}–{q3:.0f}) | {med / base:.2f}× "
              f"| {100 * of_peak:.1f} % |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "clips": args.clips,
                                         "frames": frames, "threads": args.threads, "precision": precision,
                                         "cpu_native_bf16": native_bf16(), "peak_gflops": peak,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
