"""Peers: undiffuse against diffusers and denoising-diffusion-pytorch (ddp), measured in one run on this CPU.

Run by hand (not in CI), from the repository root, with the bench requirements installed
(bench/requirements.txt; the command is in bench/README.md) and the machine otherwise idle:

    .venv/bin/python bench/peers.py                          # every part (~40 min on 2 idle cores)
    .venv/bin/python bench/peers.py --train --rounds 4       # one part, fewer rounds

Parts (all of them when none is named):

--peak     The machine's matmul ceiling: square GEMMs (n = 2048, 3072, 4096) in fp32 and bf16, through MKL
           (``torch.mm``) and through oneDNN (the same GEMM as a 1×1 convolution), best of --gemm-reps. The
           best figure per precision is "the peak"; every model's achieved FLOP/s is given as a fraction of
           the peak of the precision its matmuls ran in. Model FLOPs: ``FlopCounterMode`` on one forward
           (convolutions, matmuls, attention; 2 FLOPs per multiply-add); a training step counts 3× forward.
--train    Training images/s, interleaved rounds (train_throughput.py's ``race``: one step of every
           contender per round, median over rounds, after --warmup untimed steps), then each contender's
           peak step memory in a fresh process (train_throughput.py's ``step_peak_mib``: VmHWM over three
           steps minus RSS after building). One step = forward + loss + backward + optimizer step on one
           fixed batch of 64 × 1×32×32. Ours: train_throughput's step (ε-MSE, fused AdamW) in fp32 and in
           bf16 autocast (our default, nets/cpu.py). diffusers: the same step at its defaults (fp32) and with
           channels_last, bf16 autocast and torch.compile (--compile-train: bf16 by default, the eager-best
           precision; fp32 compiled measured the same in a trial run); a compiled contender counts only if its
           gradients pass a check against eager (CPU_NOTES.md: torch 2.13 CPU compiled training has returned
           zero gradients): no parameter tensor with an all-zero gradient where eager's is not, and cosine
           similarity > 0.9 with eager's gradient (not 1: the dropout masks come from different RNG streams).
           ddp: its own step as its Trainer runs it (GaussianDiffusion.forward: its random t, noise and
           loss; backward; gradient clipping at 1; Adam(1e-4, betas (0.9, 0.99)); its EMA every 10th step)
           and, so that it is never slowed by more work than ours, also our bare step (fused AdamW, no
           clipping, no EMA); its score is the faster of the two.
--infer    Seconds per network evaluation (NFE) at batch 64 under ``torch.inference_mode``, interleaved
           rounds as above: ours fp32, bf16 autocast, bf16 weights; diffusers fp32 (default), channels_last,
           bf16 autocast, bf16 weights, torch.compile; ddp fp32 (default) and bf16 autocast. Output error of
           each vs the same net in fp32 eager on the same input (relative RMS).
--quality  Fréchet distance vs held-out Fashion-MNIST test images at 5, 10 and 20 NFE on one trained net:
           the shipped ``fashion-mnist`` model (class-conditional, v-prediction, 1000-step cosine chain), no
           guidance (one network call per step), the same seeds and class-balanced labels for everyone. Our
           samplers (registry name:σ grid) against diffusers' schedulers driving the same network (its own
           set_timesteps → scale_model_input → net → step loop). NFE = network calls per sample, counted.
           Inception features: ``undiffuse.evaluation.inception`` (fp32; ~10 images/s here, the part's main
           cost, hence --n 300 by default); the real features are cached under ~/.cache/undiffuse/bench-peers.
           Reference: the first --n-ref/10 test images of every class; the floor is the real-vs-real distance
           at the same n: the next n/10 test images of every class vs that reference. The network runs in
           --quality-precision (bf16 autocast by default, for time; the same for every sampler).

Nets (parameter counts printed and asserted within 5 % of ours):
- ours: ``UNet()`` defaults, 64·(1, 2, 2), attention at 8×8, dropout 0.1 (6.94 M);
- diffusers ``UNet2DModel``: its stock block pattern cut to 3 levels at our widths (attention at 16 and 8,
  head dim 8), dropout 0.1 as ours: ``train_throughput.diffusers_stock`` (−2.0 %);
- ddp ``Unet(dim=28, channels=1)`` with all else at its defaults: dim_mults (1, 2, 4, 8), linear attention at
  32, 16, 8, full attention at 4×4, dropout 0; ``GaussianDiffusion`` defaults (pred_v, sigmoid β, 1000 steps).
  dim = 28 is the width that brings its default layout to our parameter count (+2.3 %).

ddp imports torchvision at module level (for its Dataset's transforms and its Trainer's image grids);
torchvision cannot be installed here, so a stub module stands in for it. Unet and GaussianDiffusion never
call torchvision.

Every measurement in one process shares the process settings: --threads threads and glibc malloc kept from
returning freed memory (``keep_freed_memory``). Results: printed as Markdown tables and merged into --json
(each part keeps its own date), with the targets met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import train_throughput as tt  # bench/ is on sys.path when this file runs as a script
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from undiffuse.nets.cpu import keep_freed_memory, train_autocast

BATCH, SIZE, CH = tt.BATCH, tt.SIZE, tt.CH
DDP_DIM = 28
DEFAULT_JSON = Path(__file__).parent / "results" / "peers.json"
CACHE = Path.home() / ".cache" / "undiffuse" / "bench-peers"
NFES = (5, 10, 20)
# Ours: the shipped model's own setting (DPM-Solver++(2M) on the Karras grid) and the samplers on the "trailing"
# grid (uniform in t, from t = T-1). Our ddim with η = 0 is the same update as euler (x̂0 + σ_next ε̂), so one
# of the two is enough. diffusers: each scheduler at its defaults for this chain, and DDIM with the "trailing"
# spacing its documentation recommends for few steps. (use_karras_sigmas=True puts most steps at t ≈ 998 on
# this cosine chain and DPMSolverMultistep then fails at 5 steps: an IndexError in diffusers 0.42.1.)
TUNED = "karras:sigma_min=0.15/sigma_max=80/rho=3/clip"   # tuned on seeds 1000-1299, not the bench's (README)
OURS_SAMPLERS = ("dpmpp_2m:karras,dpmpp_2m:trailing,unipc:trailing,ddim:trailing,heun:trailing,"
                 f"unipc:{TUNED},dpmpp_2m:{TUNED},unipc:{TUNED}/eps_scale=1.005,heun:{TUNED}")
DIFFUSERS_SCHEDULERS = ("DDIM,DDIM+trailing,DPMSolverMultistep,DPMSolverMultistep+thresholding,UniPCMultistep,"
                        "UniPCMultistep+thresholding,EulerDiscrete")


# --------------------------------------------------------------------------- the peers' nets
def import_ddp() -> types.ModuleType:
    """denoising_diffusion_pytorch, with a stub torchvision (only its Dataset and Trainer use it)."""
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.SimpleNamespace()
        stub.utils = types.SimpleNamespace()
        sys.modules["torchvision"] = stub
    import denoising_diffusion_pytorch

    return denoising_diffusion_pytorch


def ddp_unet() -> nn.Module:
    torch.manual_seed(0)
    return import_ddp().Unet(dim=DDP_DIM, channels=CH)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"torch": torch.__version__, "diffusers": version("diffusers"),
            "denoising-diffusion-pytorch": version("denoising-diffusion-pytorch")}


def forward_gflop(model: nn.Module, call: Callable[[nn.Module, Tensor], Any]) -> float:
    """GFLOP per image of one forward pass (FlopCounterMode, batch 2, divided by 2)."""
    x = torch.randn(2, CH, SIZE, SIZE)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        call(model.eval(), x)
    return fc.get_total_flops() / 2 / 1e9


def _t(x: Tensor) -> Tensor:
    return torch.linspace(10, 990, len(x)).long()


# Our U-Net laid out like ddp's default: four levels, most parameters at 4×4 (widths 16, 32, 64, 184; attention
# at 4×4 only; dropout 0 and GroupNorm groups 8 as ddp). The 3-level default spends 6.2× its FLOPs per image.
OURS_4LEVEL = {"channels": 8, "channel_mult": (2, 4, 8, 23), "attention_resolutions": (4,), "head_dim": 46,
               "groups": 8, "dropout": 0.0}


def ours_4level() -> nn.Module:
    return tt.ours(**OURS_4LEVEL)


FLOP_CALLS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Tensor], Any]]] = {
    "ours": (tt.ours, lambda m, x: m(x, _t(x).float())),
    "ours-4level": (ours_4level, lambda m, x: m(x, _t(x).float())),
    "diffusers": (tt.diffusers_stock, lambda m, x: m(x, _t(x)).sample),
    "ddp": (ddp_unet, lambda m, x: m(x, _t(x))),
}


# --------------------------------------------------------------------------- the matmul ceiling
def gemm_peak(reps: int, sizes: tuple[int, ...] = (2048, 3072, 4096),
              precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, Any]:
    """Best GFLOP/s of square GEMMs per precision and route (MKL mm, oneDNN 1×1 conv). Only the ``precisions``
    asked are measured: emulated bf16 on a CPU without it takes minutes at these sizes."""
    rows = []
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    with torch.inference_mode():
        for dtype in (dtypes[p] for p in precisions):
            for n in sizes:
                g = torch.Generator().manual_seed(n)
                a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
                x, w = a.t().contiguous().view(1, n, 1, n), b.view(n, n, 1, 1)   # (1, K, 1, M), (N, K, 1, 1)
                for route, fn in (("torch.mm (MKL)", lambda a=a, b=b: torch.mm(a, b)),
                                  ("1×1 conv (oneDNN)", lambda x=x, w=w: F.conv2d(x, w))):
                    fn()
                    times = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t0)
                    rows.append({"dtype": str(dtype).removeprefix("torch."), "n": n, "route": route,
                                 "gflops": 2 * n**3 / min(times) / 1e9})
    names = {"fp32": "float32", "bf16": "bfloat16"}
    return {"rows": rows, "peak_gflops": {p: max(r["gflops"] for r in rows if r["dtype"] == names[p])
                                          for p in precisions}}


def print_peak(res: dict[str, Any]) -> None:
    print("\n### Matmul ceiling (GFLOP/s, best of reps)\n\n| dtype | route | " +
          " | ".join(f"n = {n}" for n in sorted({r['n'] for r in res['rows']})) + " |")
    sizes = sorted({r["n"] for r in res["rows"]})
    print("|---|---|" + "---|" * len(sizes))
    for again in (False, True):
        for dtype in ("float32", "bfloat16"):
            for route in dict.fromkeys(r["route"] for r in res["rows"]):
                vals = {r["n"]: r["gflops"] for r in res["rows"] if r["dtype"] == dtype and r["route"] == route
                        and r.get("again", False) == again}
                if vals:
                    print(f"| {dtype} | {route}{' (again, after the models)' if again else ''} | "
                          + " | ".join(f"{vals[n]:.0f}" for n in sizes) + " |")
    print(f"\npeak: fp32 {res['peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {res['peak_gflops']['bf16']:.0f} GFLOP/s")


# --------------------------------------------------------------------------- training contenders
class DDPTrainer:
    """ddp's training step on one fixed batch: ``GaussianDiffusion.forward`` draws t and noise and returns
    its loss; then backward and the optimizer step. ``as_its_trainer``: as its Trainer does (clip 1.0,
    Adam(1e-4, (0.9, 0.99)), EMA(0.995) updated every 10th step); else our bare step (fused AdamW)."""

    def __init__(self, as_its_trainer: bool, bf16: bool = False):
        ddp = import_ddp()
        self.diffusion = ddp.GaussianDiffusion(ddp_unet(), image_size=SIZE).train()
        self.bf16, self.clip, self.ema = bf16, as_its_trainer, None
        if as_its_trainer:
            from ema_pytorch import EMA

            self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
            self.ema = EMA(self.diffusion, beta=0.995, update_every=10)
        else:
            self.opt = torch.optim.AdamW(self.diffusion.parameters(), lr=2e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(BATCH, CH, SIZE, SIZE, generator=g)   # images in [0, 1]: it scales them to [-1, 1]

    def step(self) -> float:
        with train_autocast(self.bf16):
            loss = self.diffusion(self.x)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        if self.ema is not None:
            self.ema.update()
        return loss.item()


COMPILE_INFO: dict[str, dict[str, Any]] = {}


def _grads(model: nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().flatten().clone() for p in model.parameters()]


def compiled_diffusers(name: str, bf16: bool) -> tt.Trainer:
    """diffusers' step with ``torch.compile(model)``; the compile is timed and the gradients checked."""
    eager = tt.diffusers_stock()
    tr = tt.Trainer(eager, bf16, False, True)
    info: dict[str, Any] = {"valid": False}
    COMPILE_INFO[name] = info
    grads = {}
    try:
        compiled = torch.compile(eager)
        for which, model in (("compiled", compiled), ("eager", eager)):  # the first compiled call compiles
            tr.model = model
            eager.zero_grad(set_to_none=True)
            torch.manual_seed(5)
            t0 = time.perf_counter()
            loss = tr.loss()
            loss.backward()
            info[f"loss_{which}"] = loss.item()
            info[f"first_step_s_{which}"] = time.perf_counter() - t0
            grads[which] = _grads(eager)
        eager.zero_grad(set_to_none=True)
        tr.model = compiled
    except Exception as err:  # noqa: BLE001 — a failed compile is a result, not a crash
        info["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        tr.model = eager
        return tr
    zero = lambda gs: sum(1 for g in gs if g is None or not bool(g.any()))  # noqa: E731
    c, e = grads["compiled"], grads["eager"]
    both = [(a, b) for a, b in zip(c, e, strict=True) if a is not None and b is not None]
    ca, ea = torch.cat([a for a, _ in both]).double(), torch.cat([b for _, b in both]).double()
    info.update(zero_grad_tensors_compiled=zero(c), zero_grad_tensors_eager=zero(e), tensors=len(c),
                grad_cosine=float(ca @ ea / (ca.norm() * ea.norm())))
    # Dropout masks differ between eager and compiled (different RNG streams), so the gradients cannot match
    # exactly; a broken compile shows as tensors whose gradient is all zeros where eager's is not.
    info["valid"] = info["zero_grad_tensors_compiled"] <= info["zero_grad_tensors_eager"] and info["grad_cosine"] > 0.9
    return tr


def train_contenders(compile_: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    c: dict[str, Callable[[], Any]] = {
        "ours fp32": lambda: tt.Trainer(tt.ours(), False, False, False),
        "ours bf16 (default)": lambda: tt.Trainer(tt.ours(), True, False, False),
        "ours-4level bf16": lambda: tt.Trainer(ours_4level(), True, False, False),
        "diffusers fp32 (default)": lambda: tt.Trainer(tt.diffusers_stock(), False, False, True),
        "diffusers fp32 channels_last": lambda: tt.Trainer(tt.diffusers_stock(), False, True, True),
        "diffusers bf16": lambda: tt.Trainer(tt.diffusers_stock(), True, False, True),
        "diffusers bf16 channels_last": lambda: tt.Trainer(tt.diffusers_stock(), True, True, True),
    }
    for prec in compile_:
        name = f"diffusers {prec} compiled"
        c[name] = lambda name=name, prec=prec: compiled_diffusers(name, prec == "bf16")
    c["ddp fp32 (default, its Trainer's step)"] = lambda: DDPTrainer(True)
    c["ddp fp32, our bare step"] = lambda: DDPTrainer(False)
    return c


def _who(name: str) -> str:
    return name.split()[0]


def _bf16(name: str) -> bool:
    return "bf16" in name


def run_train(args: argparse.Namespace, flops: dict[str, float], peak: dict[str, float] | None) -> dict[str, Any]:
    makers = train_contenders(() if args.no_compile else tuple(args.compile_train.split(",")))
    res = tt.race(makers, args.rounds, args.warmup)
    mem: dict[str, float] = {}
    if not args.skip_memory:
        for name in makers:
            if "compiled" in name and not args.memory_compiled:
                continue
            cmd = [sys.executable, __file__, "--memory-of", name, "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem[name] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    rows = {}
    for name, r in res.items():
        who = _who(name)
        gflops = 3 * flops[who] * r["median"]
        prec = "bf16" if _bf16(name) else "fp32"
        rows[name] = {**r, "peak_mib": mem.get(name), "gflops": gflops, "precision": prec,
                      "of_peak": gflops / peak[prec] if peak else None, "compile": COMPILE_INFO.get(name)}
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "rows": rows}


def valid(row: dict[str, Any]) -> bool:
    return row.get("compile") is None or bool(row["compile"].get("valid"))


def print_train(t: dict[str, Any]) -> None:
    print(f"\n### Training (run {t['date']}, {t['rounds']} rounds)\n")
    print("| contender | img/s median | (q1–q3) | img per CPU-s | peak step MiB | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|")
    for n, r in t["rows"].items():
        mem = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "–"
        frac = f"{100 * r['of_peak']:.0f} % ({r['precision']})" if r.get("of_peak") is not None else "–"
        note = "" if valid(r) else " (excluded: compile failed or gave wrong gradients)"
        print(f"| {n}{note} | {r['median']:.1f} | {r['q1']:.1f}–{r['q3']:.1f} | {r['per_cpu_s']:.1f} | {mem} "
              f"| {r['gflops']:.0f} | {frac} |")
    for n, r in t["rows"].items():
        if r.get("compile"):
            print(f"{n}: {json.dumps(r['compile'])}")


# --------------------------------------------------------------------------- inference contenders
def randomise_zero_layers(model: nn.Module) -> nn.Module:
    """Give zero-initialised weights (ours: every residual branch's last convolution and the output layer, as
    in ADM) small seeded random values, so that an untrained net's output, and its error in bf16, is not 0."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


class Infer:
    """One network evaluation at batch 64 under inference_mode; ``step()`` as race() expects."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, Tensor, Tensor], Tensor], *,
                 bf16_autocast: bool = False, bf16_weights: bool = False, channels_last: bool = False,
                 compile_: bool = False):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = randomise_zero_layers(model).eval().to(memory_format=fmt)
        if bf16_weights:
            self.model = self.model.to(torch.bfloat16)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(BATCH, CH, SIZE, SIZE, generator=g)
        self.x = (x.to(torch.bfloat16) if bf16_weights else x).contiguous(memory_format=fmt)
        self.t = torch.randint(0, 1000, (BATCH,), generator=g)
        self.call, self.autocast = call, bf16_autocast
        self.compile_s: float | None = None
        self.error: str | None = None
        if compile_:
            self.model = torch.compile(self.model)
            t0 = time.perf_counter()
            try:
                self.output()
            except Exception as err:  # noqa: BLE001 — reported, and the contender dropped
                self.error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            self.compile_s = time.perf_counter() - t0

    def output(self) -> Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.call(self.model, self.x, self.t).float()

    def step(self) -> None:
        self.output()


def infer_contenders(compile_: bool) -> dict[str, Callable[[], Infer]]:
    ours = lambda m, x, t: m(x, t.to(x.dtype))  # noqa: E731
    diff = lambda m, x, t: m(x, t).sample  # noqa: E731
    ddp = lambda m, x, t: m(x, t)  # noqa: E731
    c = {
        "ours fp32": lambda: Infer(tt.ours(), ours),
        "ours bf16 autocast (default)": lambda: Infer(tt.ours(), ours, bf16_autocast=True),
        "ours bf16 weights": lambda: Infer(tt.ours(), ours, bf16_weights=True),
        "ours-4level fp32": lambda: Infer(ours_4level(), ours),
        "ours-4level bf16 autocast": lambda: Infer(ours_4level(), ours, bf16_autocast=True),
        "diffusers fp32 (default)": lambda: Infer(tt.diffusers_stock(), diff),
        "diffusers fp32 channels_last": lambda: Infer(tt.diffusers_stock(), diff, channels_last=True),
        "diffusers bf16 autocast": lambda: Infer(tt.diffusers_stock(), diff, bf16_autocast=True),
        "diffusers bf16 weights": lambda: Infer(tt.diffusers_stock(), diff, bf16_weights=True),
        "diffusers bf16 weights channels_last": lambda: Infer(tt.diffusers_stock(), diff, bf16_weights=True,
                                                              channels_last=True),
    }
    if compile_:
        c["diffusers fp32 compiled"] = lambda: Infer(tt.diffusers_stock(), diff, compile_=True)
        c["diffusers bf16 weights compiled"] = lambda: Infer(tt.diffusers_stock(), diff, bf16_weights=True,
                                                             compile_=True)
    c["ddp fp32 (default)"] = lambda: Infer(ddp_unet(), ddp)
    c["ddp bf16 autocast"] = lambda: Infer(ddp_unet(), ddp, bf16_autocast=True)
    return c


def run_infer(args: argparse.Namespace, flops: dict[str, float], peak: dict[str, float] | None) -> dict[str, Any]:
    built: dict[str, Infer] = {}
    failed: dict[str, str] = {}
    for name, make in infer_contenders(not args.no_compile).items():
        try:
            inf = make()
            if inf.error is None:
                inf.output()  # a net that cannot run in this setting (e.g. bf16 weights) fails here
        except Exception as err:  # noqa: BLE001 — reported in the table
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        if inf.error is not None:
            failed[name] = inf.error
        else:
            built[name] = inf
    reference = {who: built[f"{who} fp32" + (" (default)" if who != "ours" else "")].output() for who in FLOP_CALLS}
    res = tt.race({n: (lambda i=i: i) for n, i in built.items()}, args.infer_rounds, args.warmup)
    rows: dict[str, Any] = {}
    for name, r in res.items():
        who, inf = _who(name), built[name]
        out, ref = inf.output(), reference[who]
        s = BATCH / r["median"]
        prec = "bf16" if _bf16(name) else "fp32"
        gflops = flops[who] * BATCH / s
        rows[name] = {"s_per_nfe": s, "q1": BATCH / r["q3"], "q3": BATCH / r["q1"], "per_cpu_s": BATCH / r["per_cpu_s"],
                      "rel_rms_error": float((out - ref).norm() / ref.norm()), "compile_s": inf.compile_s,
                      "gflops": gflops, "precision": prec, "of_peak": gflops / peak[prec] if peak else None}
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.infer_rounds, "rows": rows, "failed": failed}


def print_infer(t: dict[str, Any]) -> None:
    print(f"\n### Inference, batch {BATCH} (run {t['date']}, {t['rounds']} rounds)\n")
    print("| contender | s/NFE median | (q1–q3) | CPU-s/NFE | rel. error vs fp32 | compile s | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in t["rows"].items():
        comp = f"{r['compile_s']:.0f}" if r.get("compile_s") else "–"
        frac = f"{100 * r['of_peak']:.0f} % ({r['precision']})" if r.get("of_peak") is not None else "–"
        print(f"| {n} | {r['s_per_nfe']:.3f} | {r['q1']:.3f}–{r['q3']:.3f} | {r['per_cpu_s']:.3f} "
              f"| {r['rel_rms_error']:.2e} | {comp} | {r['gflops']:.0f} | {frac} |")
    for n, e in t["failed"].items():
        print(f"| {n} | failed: {e} | | | | | | |")


# --------------------------------------------------------------------------- quality per NFE
class CountingNet(nn.Module):
    """The shipped network, run in the chosen precision, counting its calls."""

    def __init__(self, net: nn.Module, bf16: bool):
        super().__init__()
        self.net, self.bf16, self.calls = net, bf16, 0

    def forward(self, z: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(z, t, cond).float()


def our_steps(sampler: str, nfe: int) -> int:
    """Steps that spend at most ``nfe`` network calls: Heun's last step (to σ = 0) is a single Euler call."""
    return (nfe + 1) // 2 if sampler in ("heun", "dpm_2") else nfe


def parse_ours(spec: str) -> tuple[str, str | None, dict[str, float]]:
    """'sampler:grid' or 'sampler:grid:option=value/…' (sigma_min, sigma_max, rho, eps_scale; 'clip' alone)
    → (sampler, grid or None, options): the options of ``undiffuse sample`` of the same names."""
    sampler, _, rest = spec.partition(":")
    grid, _, options = rest.partition(":")
    opts: dict[str, float] = {}
    for item in filter(None, options.split("/")):
        key, _, value = item.partition("=")
        opts[key] = float(value) if value else 1.0
    return sampler, grid or None, opts


def diffusers_scheduler(spec: str):
    """'Name' (diffusers' defaults for our chain: cosine β, v-prediction, 1000 steps) or 'Name+option'."""
    import diffusers

    name, _, option = spec.partition("+")
    extra = {"trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True}, "": {},
             "thresholding": {"thresholding": True, "sample_max_value": 1.0}}[option]
    cls = getattr(diffusers, name + "Scheduler")
    return lambda: cls(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                       **extra)


def real_features(inception, per_class: int) -> Tensor:
    """Inception features of the first ``per_class`` test images of every class: (10, per_class, 2048), cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for f in sorted(CACHE.glob("fashion-mnist-test-*perclass.pt"), key=lambda p: int(p.stem.split("-")[-1][:-8])):
        k = int(f.stem.split("-")[-1][:-8])
        if k >= per_class:
            return torch.load(f)[:, :per_class]
    from undiffuse.data.fashion_mnist import load_fashion_mnist

    data = load_fashion_mnist("test", SIZE)
    idx = torch.stack([torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(10)])  # (10, k)
    images = data.images[idx.flatten()].float() / 127.5 - 1
    t0 = time.perf_counter()
    feats = inception(images, progress=True).view(10, per_class, -1)
    print(f"  real features: {len(images)} test images, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    torch.save(feats, CACHE / f"fashion-mnist-test-{per_class}perclass.pt")
    return feats


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers  # noqa: F401 — fail early if missing

    from undiffuse import samplers
    from undiffuse.denoiser import VPDenoiser, shaped
    from undiffuse.evaluation.fid import fid_from_features
    from undiffuse.evaluation.inception import InceptionFeatures
    from undiffuse.models import load_model

    n, n_ref = args.n, args.n_ref
    if n % 10 or n_ref % 10:
        raise SystemExit("--n and --n-ref must be multiples of 10 (classes balanced)")
    model = load_model("fashion-mnist")
    counting = CountingNet(model.denoiser.net, args.quality_precision == "bf16")
    den = VPDenoiser(counting, model.denoiser.prediction, schedule=model.denoiser.schedule)
    inception = InceptionFeatures()
    real = real_features(inception, (n_ref + n) // 10)
    ref = real[:, : n_ref // 10].reshape(-1, real.shape[-1])
    floor = fid_from_features(real[:, n_ref // 10:].reshape(-1, real.shape[-1]), ref)
    print(f"  real-vs-real floor: {n} test images vs {n_ref} others: FD {floor:.2f}", file=sys.stderr)

    labels = torch.arange(n) % 10
    seeds = [args.seed + i for i in range(n)]
    eps = samplers.randn((n, CH, SIZE, SIZE), samplers.make_generators(seeds))   # one seed per sample
    batches = [slice(s, min(s + BATCH, n)) for s in range(0, n, BATCH)]

    def ours(spec: str, nfe: int) -> tuple[Tensor, int]:
        sampler, grid, opts = parse_ours(spec)
        steps = our_steps(sampler, nfe)
        sigmas = model.sigmas(steps, grid, opts.get("sigma_min"), opts.get("sigma_max"), opts.get("rho", 7.0))
        d = shaped(den, opts.get("eps_scale", 1.0), bool(opts.get("clip")))
        fn = samplers.get(sampler)
        gens = samplers.make_generators(seeds)
        out = [fn(d, eps[b] * float(sigmas[0]), sigmas, cond=labels[b], generator=gens[b]) for b in batches]
        return torch.cat(out), steps

    def theirs(spec: str, nfe: int) -> tuple[Tensor, int]:
        make = diffusers_scheduler(spec)
        out = []
        for b in batches:
            sched = make()
            sched.set_timesteps(nfe)
            x = eps[b] * sched.init_noise_sigma
            for t in sched.timesteps:
                tb = torch.as_tensor(t, dtype=torch.float32).expand(len(x))
                x = sched.step(counting(sched.scale_model_input(x, t), tb, labels[b]), t, x).prev_sample
            out.append(x)
        return torch.cat(out), nfe

    rows = []
    specs = [("ours", s) for s in args.ours.split(",") if s]
    specs += [("diffusers", s) for s in args.diffusers.split(",") if s]
    for who, spec in specs:
        for nfe in (args.ours_nfes if who == "ours" else args.diffusers_nfes) or args.nfes:
            counting.calls = 0
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    images, steps = (ours if who == "ours" else theirs)(spec, nfe)
            except Exception as err:  # noqa: BLE001 — e.g. a scheduler option that breaks on this chain
                error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                rows.append({"who": who, "sampler": spec, "nfe_target": nfe, "error": error})
                print(f"  {who} {spec} {nfe} NFE: failed, {error}", file=sys.stderr, flush=True)
                continue
            sample_s = time.perf_counter() - t0
            calls = counting.calls / len(batches)
            t0 = time.perf_counter()
            fd = fid_from_features(inception(images), ref)
            rows.append({"who": who, "sampler": spec, "nfe_target": nfe, "steps": steps, "nfe": calls, "n": n,
                         "fd": fd, "sample_s": sample_s, "inception_s": time.perf_counter() - t0})
            print(f"  {who} {spec} {nfe} NFE ({calls:g} counted): FD {fd:.2f} (n = {n}; sampling {sample_s:.0f} s, "
                  f"features {rows[-1]['inception_s']:.0f} s)", file=sys.stderr, flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "n": n, "n_ref": n_ref, "floor_fd": floor,
            "precision": args.quality_precision, "seeds": f"{args.seed}–{args.seed + n - 1}", "rows": rows}


def print_quality(q: dict[str, Any]) -> None:
    nfes = sorted({r["nfe_target"] for r in q["rows"]})
    print(f"\n### Fréchet distance vs Fashion-MNIST test images (run {q['date']}; n = {q['n']} generated vs "
          f"{q['n_ref']} real; network in {q['precision']}; seeds {q['seeds']})\n")
    print("| sampler | " + " | ".join(f"{k} NFE" for k in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for who, spec in dict.fromkeys((r["who"], r["sampler"]) for r in q["rows"]):
        cells = []
        for k in nfes:
            r = next((r for r in q["rows"] if (r["who"], r["sampler"], r["nfe_target"]) == (who, spec, k)), None)
            if r is None or "error" in r:
                cells.append("–" if r is None else "failed")
            else:
                cells.append(f"{r['fd']:.2f}" + (f" ({r['nfe']:g} NFE)" if r["nfe"] != k else ""))
        print(f"| {who} {spec} | " + " | ".join(cells) + " |")
    print(f"| real vs real (floor, n = {q['n']}) | " + " | ".join(f"{q['floor_fd']:.2f}" for _ in nfes) + " |")
    for r in q["rows"]:
        if "error" in r:
            print(f"{r['who']} {r['sampler']} at {r['nfe_target']} NFE failed: {r['error']}")


# --------------------------------------------------------------------------- targets
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def add(what: str, value: float, goal: str, met: bool) -> None:
        out.append({"target": what, "value": value, "goal": goal, "met": bool(met)})

    if "train" in res:
        rows = res["train"]["rows"]
        ours = rows["ours bf16 (default)"]["median"]
        d_def = rows["diffusers fp32 (default)"]["median"]
        d_best_name = max((n for n in rows if n.startswith("diffusers") and valid(rows[n])),
                          key=lambda n: rows[n]["median"])
        ddp = max(r["median"] for n, r in rows.items() if n.startswith("ddp"))
        add("training img/s: ours / diffusers default", ours / d_def, "≥ 2", ours / d_def >= 2)
        add(f"training img/s: ours / diffusers best ({d_best_name})", ours / rows[d_best_name]["median"], "≥ 1.5",
            ours / rows[d_best_name]["median"] >= 1.5)
        add("training img/s: ours / ddp default (its faster step)", ours / ddp, "≥ 3", ours / ddp >= 3)
        if "ours-4level bf16" in rows:
            o4 = rows["ours-4level bf16"]["median"]
            add("training img/s: ours-4level (ddp's layout family) / ddp default (its faster step)", o4 / ddp,
                "≥ 3", o4 / ddp >= 3)
        if rows["ours bf16 (default)"].get("of_peak") is not None:
            f = rows["ours bf16 (default)"]["of_peak"]
            add("training FLOP/s of the bf16 peak (ours bf16)", f, "≥ 0.6", f >= 0.6)
    if "infer" in res:
        rows = res["infer"]["rows"]
        best_ours = min((n for n in rows if n.startswith("ours ")), key=lambda n: rows[n]["s_per_nfe"])
        d_best = min((n for n in rows if n.startswith("diffusers")), key=lambda n: rows[n]["s_per_nfe"])
        o, d_def = rows[best_ours]["s_per_nfe"], rows["diffusers fp32 (default)"]["s_per_nfe"]
        add(f"inference s/NFE: ours ({best_ours}) / diffusers default", o / d_def, "≤ 0.5", o / d_def <= 0.5)
        add(f"inference s/NFE: ours ({best_ours}) / diffusers best ({d_best})", o / rows[d_best]["s_per_nfe"],
            "< 1", o < rows[d_best]["s_per_nfe"])
        if rows[best_ours].get("of_peak") is not None:
            f = rows[best_ours]["of_peak"]
            add(f"inference FLOP/s of the {rows[best_ours]['precision']} peak ({best_ours})", f, "≥ 0.6", f >= 0.6)
    if "quality" in res:
        rows = res["quality"]["rows"]
        ours10 = [r for r in rows if r["who"] == "ours" and r["nfe_target"] == 10 and "fd" in r]
        theirs20 = [r for r in rows if r["who"] == "diffusers" and r["nfe_target"] == 20 and "fd" in r]
        if ours10 and theirs20:
            o, d = min(ours10, key=lambda r: r["fd"]), min(theirs20, key=lambda r: r["fd"])
            add(f"FD: ours best at 10 NFE ({o['sampler']}, {o['nfe']:g} NFE) vs diffusers best at 20 "
                f"({d['sampler']})", o["fd"] / d["fd"], "≤ 1 (ratio of FDs)", o["fd"] <= d["fd"])
    return out


# --------------------------------------------------------------------------- main
def check_params() -> dict[str, int]:
    counts = {who: tt.n_params(make()) for who, (make, _) in FLOP_CALLS.items()}
    print("parameters: " + ", ".join(f"{w} {c:,} ({100 * (c / counts['ours'] - 1):+.1f} %)" for w, c in counts.items()))
    for w, c in counts.items():
        assert abs(c / counts["ours"] - 1) < 0.05, f"{w}: parameter count differs from ours by more than 5 %"
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ap.add_argument_group("parts (default: all)")
    for p in ("peak", "train", "infer", "quality"):
        parts.add_argument(f"--{p}", action="store_true")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved training rounds")
    ap.add_argument("--infer-rounds", type=int, default=None, help="inference rounds (default: 2 × --rounds)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps / calls per contender")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm-reps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    ap.add_argument("--compile-train", default="bf16", choices=("bf16", "fp32", "fp32,bf16"),
                    help="precisions of the compiled diffusers training contenders (each compile takes minutes)")
    ap.add_argument("--skip-memory", action="store_true", help="no peak-memory subprocesses")
    ap.add_argument("--memory-compiled", action="store_true", help="also peak memory of compiled contenders (slow)")
    ap.add_argument("--n", type=int, default=300, help="generated images per sampler and NFE (multiple of 10)")
    ap.add_argument("--n-ref", type=int, default=2000, help="real test images in the reference set")
    nfe_list = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--nfes", type=nfe_list, default=list(NFES))
    ap.add_argument("--ours-nfes", type=nfe_list, help="our samplers' NFEs (default: --nfes)")
    ap.add_argument("--diffusers-nfes", type=nfe_list, help="diffusers' schedulers' NFEs (default: --nfes)")
    ap.add_argument("--ours", default=OURS_SAMPLERS, help="our samplers, comma-separated name:grid")
    ap.add_argument("--diffusers", default=DIFFUSERS_SCHEDULERS,
                    help="diffusers schedulers, comma-separated Name[+trailing|+karras] (Name + 'Scheduler')")
    ap.add_argument("--quality-precision", choices=("bf16", "fp32"), default="bf16",
                    help="the network's precision while sampling (the same for every sampler)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.infer_rounds = args.infer_rounds or 2 * args.rounds

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its advice on .to(bfloat16) concerns from_pretrained models
    if args.rounds < 2:
        raise SystemExit("--rounds must be at least 2 (quartiles)")
    if args.memory_of:
        print(json.dumps({"peak_mib": tt.step_peak_mib(train_contenders(("fp32", "bf16"))[args.memory_of]())}))
        return
    run_all = not (args.peak or args.train or args.infer or args.quality)
    t_start = time.perf_counter()
    res: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    res.update(date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine(),
               cpu=_cpu_name(), threads=args.threads, versions=versions())
    print(f"# {res['date']}  {res['cpu']}  threads {args.threads}  {res['versions']}  "
          f"load average {os.getloadavg()[0]:.2f}")
    res["params"] = check_params()
    res["gflop_per_image_forward"] = flops = {w: forward_gflop(m(), c) for w, (m, c) in FLOP_CALLS.items()}
    print("GFLOP per image, forward: " + ", ".join(f"{w} {v:.3f}" for w, v in flops.items()))

    peak = res.get("peak", {}).get("peak_gflops")
    if run_all or args.peak:
        res["peak"] = gemm_peak(args.gemm_reps)
        res["peak"]["date"] = time.strftime("%Y-%m-%d %H:%M")
        peak = res["peak"]["peak_gflops"]
    if run_all or args.train:
        res["train"] = run_train(args, flops, peak)
    if run_all or args.infer:
        res["infer"] = run_infer(args, flops, peak)
    if (run_all or args.peak) and (run_all or args.train or args.infer):
        # Again after the models, so that a busy spell during the first try does not lower the ceiling.
        again = gemm_peak(args.gemm_reps)
        res["peak"]["rows"] += [{**r, "again": True} for r in again["rows"]]
        res["peak"]["peak_gflops"] = {k: max(v, again["peak_gflops"][k]) for k, v in peak.items()}
        _rescale(res, res["peak"]["peak_gflops"])
    if "peak" in res:
        print_peak(res["peak"])
    if run_all or args.train:
        print_train(res["train"])
    if run_all or args.infer:
        print_infer(res["infer"])
    if run_all or args.quality:
        save(res, args.json, t_start)  # the timed parts are kept should the long quality part be stopped
        res["quality"] = run_quality(args)
        print_quality(res["quality"])
    res["targets"] = targets(res)
    print("\n### Targets\n\n| target | value | goal | met |\n|---|---|---|---|")
    for t in res["targets"]:
        print(f"| {t['target']} | {t['value']:.2f} | {t['goal']} | {'yes' if t['met'] else 'no'} |")
    save(res, args.json, t_start)
    print(f"\n{res['seconds'] / 60:.1f} min; written {args.json}")


def save(res: dict[str, Any], path: Path, t_start: float) -> None:
    res["seconds"] = time.perf_counter() - t_start
    res["load_average_end"] = os.getloadavg()
    res["targets"] = targets(res)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=float))


def _rescale(res: dict[str, Any], peak: dict[str, float]) -> None:
    """Recompute every "of peak" fraction against ``peak``."""
    for part in ("train", "infer"):
        for r in res.get(part, {}).get("rows", {}).values():
            r["of_peak"] = r["gflops"] / peak[r["precision"]]


def _cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
