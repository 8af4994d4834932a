"""bf16 against fp32 on this CPU: a GEMM and a U-Net training step, and what "auto" precision picks here.

bf16 autocast pays where the CPU multiplies bf16 natively (AVX512-BF16, AMX); elsewhere oneDNN emulates it.
This prints the CPU's bf16 flags, ``undiffuse.nets.cpu.native_bf16()``, and (a) the best GFLOP/s of an n×n GEMM
in fp32 and bf16 (peers.py's ``gemm_peak``: MKL mm and a oneDNN 1×1 convolution) and (b) images/s of one training
step (forward + min-SNR v-loss + backward + fused AdamW) of the latent recipe's U-Net on a batch of 64 latents
(4×8×8) and of the pixel recipe's on 64 × 1×32×32, fp32 and under bf16 autocast (train_throughput.py's ``race``:
interleaved rounds, median).

    .venv/bin/python bench/bf16_native.py            # ~1-3 min on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import types

import peers  # bench/ is on sys.path when this file runs as a script
import torch
import train_throughput as tt

from undiffuse.config import load_config
from undiffuse.losses import denoising_loss
from undiffuse.models import build_denoiser, build_net
from undiffuse.nets.cpu import cpu_flags, native_bf16


def train_step(recipe: str, shape: tuple[int, int, int], bf16: bool) -> types.SimpleNamespace:
    """A contender for ``tt.race``: an object whose ``step()`` is one training step on a fixed batch of 64."""
    cfg = load_config(recipe)
    torch.manual_seed(0)
    net = build_net(cfg, 10, shape=shape)
    den = build_denoiser(cfg, net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x0, labels = torch.randn(64, *shape), torch.arange(64) % 10
    sigma = torch.rand(64) * 10 + 0.05

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = denoising_loss(den, x0, sigma, labels, min_snr_gamma=5.0)
        loss.backward()
        opt.step()
    return types.SimpleNamespace(step=step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="GEMM repetitions")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved training-step rounds")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags() or set()
    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}, vector unit "
          f"{torch.backends.cpu.get_cpu_capability()}; bf16 flags: "
          f"{', '.join(sorted(f for f in flags if 'bf16' in f)) or 'none'}; native_bf16() = {native_bf16()}")
    peak = peers.gemm_peak(args.reps, sizes=(args.n,))["peak_gflops"]
    print("\n| work | fp32 | bf16 | bf16 / fp32 |\n|---|---|---|---|")
    print(f"| GEMM {args.n}², best GFLOP/s | {peak['fp32']:.1f} | {peak['bf16']:.1f} | "
          f"{peak['bf16'] / peak['fp32']:.2f}× |")
    for name, recipe, shape in (("latent U-Net step", "configs/fashion-mnist-latent.toml", (4, 8, 8)),
                                ("pixel U-Net step", "configs/fashion-mnist.toml", (1, 32, 32))):
        res = tt.race({p: (lambda p=p, r=recipe, s=shape: train_step(r, s, p == "bf16")) for p in ("fp32", "bf16")},
                      args.rounds, warmup=1)
        fp, bf = res["fp32"]["median"], res["bf16"]["median"]
        print(f"| {name} ({recipe}), batch 64, img/s | {fp:.0f} | {bf:.0f} | {bf / fp:.2f}× |")


if __name__ == "__main__":
    main()
