"""Training throughput on the CPU: our U-Net vs diffusers' UNet2DModel at equal parameter count.

Run by hand (not in CI), from the repository root:

    .venv/bin/python bench/train_throughput.py --stock       # the comparison table + checks (~20 min)
    .venv/bin/python bench/train_throughput.py --levers      # our net with one lever undone at a time

One training step = forward + ε-MSE loss + backward + AdamW, batch 64 of 1×32×32, 2 threads.
Every contender gets the same process settings (threads, glibc malloc kept from returning freed
memory to the OS, fused AdamW) and is tried in fp32, bf16 autocast and channels_last; its best
setting is its score. Contenders are interleaved one step at a time, round after round, so a busy
machine slows them alike; warm-up steps are excluded; the figure is the median over rounds.

Peak memory: each contender again in a fresh subprocess; resident set size (``/proc/self/statm``)
after building model, optimizer and batch, subtracted from the peak RSS (VmHWM in
``/proc/self/status``, reset just before stepping) over three steps = the step's peak working
memory (activations, gradients, AdamW state, workspaces).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from undiffuse.nets import blocks
from undiffuse.nets.cpu import keep_freed_memory, train_autocast
from undiffuse.nets.unet import UNet
from undiffuse.process import DiscreteSchedule

BATCH, SIZE, CH = 64, 32, 1


# --------------------------------------------------------------------------- the nets
def ours(**kw) -> nn.Module:
    torch.manual_seed(0)
    return UNet(in_channels=CH, image_size=SIZE, **kw)  # the defaults: 64·(1,2,2), 2 blocks, attention at 8


def diffusers_mirror() -> nn.Module:
    """UNet2DModel laid out like ours: same widths, blocks, attention at 8×8 only, scale-shift norm."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=SIZE, in_channels=CH, out_channels=CH, block_out_channels=(64, 128, 128),
                       layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=64,
                       norm_num_groups=32, resnet_time_scale_shift="scale_shift", dropout=0.1)


def diffusers_stock() -> nn.Module:
    """UNet2DModel with its stock block pattern cut to 3 levels: attention at 16 and 8, head dim 8,
    additive time embedding; same widths (parameters within 5 % of ours)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=SIZE, in_channels=CH, out_channels=CH, block_out_channels=(64, 128, 128),
                       layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), dropout=0.1)


def diffusers_fp32_attention(model: nn.Module) -> nn.Module:
    """Our CPU trick applied to diffusers: its attention modules run outside autocast, in fp32."""
    from diffusers.models.attention_processor import Attention

    def wrap(f: Callable) -> Callable:
        def forward(*args, **kwargs):
            cast = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            kw = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
            with torch.autocast("cpu", enabled=False):
                return f(*cast, **kw)
        return forward

    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = wrap(m.forward)
    return model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- levers undone (for --levers)
class _AddcmulAdaGN:
    """The textbook AdaGN: GroupNorm, then a broadcast multiply-add (what diffusers does)."""

    def __init__(self, block: blocks.ResBlock):
        self.b = block

    def __call__(self, h, emb):
        scale, shift = self.b.emb(emb)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(shift, self.b.norm2(h), 1 + scale)


def undo(model: UNet, lever: str) -> UNet:
    for m in model.modules():
        if lever == "nn.Dropout" and isinstance(m, blocks.ResBlock):
            m.dropout = nn.Dropout(m.dropout.p)
        if lever == "addcmul AdaGN" and isinstance(m, blocks.ResBlock):
            m.adagn = _AddcmulAdaGN(m)
        if lever == "bf16 attention" and isinstance(m, blocks.AttentionBlock):
            m.fp32_attention = False
    return model


# --------------------------------------------------------------------------- one training step
class Trainer:
    """A model, its AdamW and one fixed random batch; ``step()`` runs one training step."""

    def __init__(self, model: nn.Module, bf16: bool, channels_last: bool, diffusers: bool):
        self.model, self.bf16, self.diffusers = model, bf16, diffusers
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt).train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(BATCH, CH, SIZE, SIZE, generator=g) * 2 - 1                  # (B, C, H, W)
        self.eps = torch.randn(x0.shape, generator=g)
        self.t = torch.randint(0, 1000, (BATCH,), generator=g)
        self.x = DiscreteSchedule.from_name("cosine").q_sample(x0, self.t, self.eps).contiguous(memory_format=fmt)

    def loss(self) -> torch.Tensor:
        with train_autocast(self.bf16):
            out = self.model(self.x, self.t).sample if self.diffusers else self.model(self.x, self.t.float())
            return F.mse_loss(out.float(), self.eps)

    def step(self) -> float:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def contenders(levers: bool, stock: bool = False) -> dict[str, Callable[[], Trainer]]:
    if levers:
        c = {"ours bf16 (all levers)": lambda: Trainer(ours(), True, False, False)}
        for lever in ("nn.Dropout", "addcmul AdaGN", "bf16 attention"):
            c[f"ours bf16, {lever}"] = lambda lv=lever: Trainer(undo(ours(), lv), True, False, False)
        c["ours bf16, attention at 16 and 8"] = lambda: Trainer(ours(attention_resolutions=(16, 8)), True, False, False)
        c["ours bf16, avg-pool downsampling"] = lambda: Trainer(ours(conv_downsample=False), True, False, False)
        c["ours bf16, channels_last"] = lambda: Trainer(ours(), True, True, False)
        return c
    c = {}
    for bf16, cl in [(False, False), (True, False), (True, True)]:
        tag = ("bf16" if bf16 else "fp32") + (" channels_last" if cl else "")
        c[f"ours {tag}"] = lambda b=bf16, l=cl: Trainer(ours(), b, l, False)
    for bf16, cl in [(False, False), (False, True), (True, False), (True, True)]:
        tag = ("bf16" if bf16 else "fp32") + (" channels_last" if cl else "")
        c[f"diffusers {tag}"] = lambda b=bf16, l=cl: Trainer(diffusers_mirror(), b, l, True)
    c["diffusers bf16 + our fp32 attention"] = lambda: Trainer(diffusers_fp32_attention(diffusers_mirror()),
                                                               True, False, True)
    if stock:  # not the headline: a different architecture (attention also at 16×16)
        c["diffusers stock pattern bf16"] = lambda: Trainer(diffusers_stock(), True, False, True)
        c["diffusers stock pattern bf16 + our fp32 attention"] = lambda: Trainer(
            diffusers_fp32_attention(diffusers_stock()), True, False, True)
    return c


# --------------------------------------------------------------------------- measurements
def race(makers: dict[str, Callable[[], Trainer]], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    """Interleave: each round runs one step of every contender. img/s by wall clock and per CPU-second."""
    trainers = {}
    for name, make in makers.items():
        trainers[name] = make()
        for _ in range(warmup):
            trainers[name].step()
    wall: dict[str, list[float]] = {n: [] for n in trainers}
    cpu: dict[str, list[float]] = {n: [] for n in trainers}
    for r in range(rounds):
        for name, tr in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            tr.step()
            wall[name].append(BATCH / (time.perf_counter() - t0))
            cpu[name].append(BATCH / (time.process_time() - c0))
        print(f"  round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return {n: {"median": statistics.median(wall[n]), "q1": statistics.quantiles(wall[n], n=4)[0],
                "q3": statistics.quantiles(wall[n], n=4)[2], "best": max(wall[n]),
                "per_cpu_s": statistics.median(cpu[n])} for n in trainers}


def peak_memory(name: str, args: argparse.Namespace) -> float:
    """Peak working memory of one contender's training step in MiB, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-of", name, "--threads", str(args.threads)]
    cmd += ["--levers"] if args.levers else []
    cmd += ["--stock"] if args.stock else []
    cmd += ["--no-keep-memory"] if args.no_keep_memory else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def step_peak_mib(tr, steps: int = 3) -> float:
    """Peak RSS over ``steps`` calls of ``tr.step()`` minus RSS before them, in MiB. Call it in a fresh process."""
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    # ru_maxrss survives fork + exec (it would report the parent's peak): reset the high-water mark.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(steps):
        tr.step()
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peak = int(status["VmHWM"].split()[0]) * 1024
    return (peak - rss) / 2**20


def _memory_child(name: str, levers: bool, stock: bool) -> None:
    print(json.dumps({"peak_mib": step_peak_mib(contenders(levers, stock)[name]())}))


def check_ours(steps: int) -> None:
    """Loss stays finite over a few bf16 steps; then bf16 and fp32 gradients agree at those weights."""
    tr = Trainer(ours(), True, False, False)
    losses = [tr.step() for _ in range(steps)]
    print(f"\nours, bf16, {steps} steps on random data: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"all finite: {all(map(lambda v: v == v and abs(v) < float('inf'), losses))}")
    grads = {}
    for bf16 in (False, True):
        tr.bf16 = bf16
        tr.model.zero_grad()
        torch.manual_seed(3)  # the same dropout masks in both
        tr.loss().backward()
        grads[bf16] = [p.grad.detach().flatten().clone() for p in tr.model.parameters()]
    def cos(a: torch.Tensor, b: torch.Tensor) -> float:  # in float64, no eps: some gradients are tiny
        a, b = a.double(), b.double()
        return (a @ b / (a.norm() * b.norm())).item()

    total = cos(torch.cat(grads[True]), torch.cat(grads[False]))
    per = [cos(a, b) for a, b in zip(grads[True], grads[False], strict=True) if b.norm() > 0]
    print(f"bf16 vs fp32 gradients: cosine similarity {total:.5f} over all parameters; "
          f"median per tensor {statistics.median(per):.4f}, lowest {min(per):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (one step per contender each)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levers", action="store_true", help="our net with one speed lever undone at a time")
    ap.add_argument("--no-keep-memory", action="store_true", help="leave glibc malloc at its defaults")
    ap.add_argument("--check-steps", type=int, default=20, help="bf16 steps before the gradient check")
    ap.add_argument("--stock", action="store_true", help="also diffusers' stock block pattern (attention at 16 too)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if not args.no_keep_memory:
        keep_freed_memory()
    if args.memory_of:
        _memory_child(args.memory_of, args.levers, args.stock)
        return

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  threads {args.threads}  "
          f"batch {BATCH} × {CH}×{SIZE}×{SIZE}  keep freed memory: {not args.no_keep_memory}  "
          f"load average {os.getloadavg()[0]:.2f}")
    n_ours = n_params(ours())
    if not args.levers:
        n_diff = n_params(diffusers_mirror())
        print(f"parameters: ours {n_ours:,}  diffusers UNet2DModel {n_diff:,}  ({100 * (n_diff / n_ours - 1):+.2f} %)")
        assert abs(n_diff / n_ours - 1) < 0.05, "parameter counts differ by more than 5 %"
        if args.stock:
            n_stock = n_params(diffusers_stock())
            print(f"            diffusers stock pattern {n_stock:,}  ({100 * (n_stock / n_ours - 1):+.2f} %)")
            assert abs(n_stock / n_ours - 1) < 0.05, "parameter counts differ by more than 5 %"
    x = torch.zeros(1, CH, SIZE, SIZE)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        ours()(x, torch.zeros(1))
    print(f"ours: {fc.get_total_flops() / 1e9:.3f} GFLOP per image forward")

    makers = contenders(args.levers, args.stock)
    res = race(makers, args.rounds, args.warmup)
    mem = {} if args.skip_memory else {n: peak_memory(n, args) for n in makers}
    print("\n| contender | img/s median | (q1–q3) | best | img per CPU-s | peak step memory MiB |")
    print("|---|---|---|---|---|---|")
    for n, r in res.items():
        m = f"{mem[n]:.0f}" if n in mem else "–"
        print(f"| {n} | {r['median']:.1f} | {r['q1']:.1f}–{r['q3']:.1f} | {r['best']:.1f} "
              f"| {r['per_cpu_s']:.1f} | {m} |")
    if not args.levers:
        best = {who: max((n for n in res if n.startswith(who)), key=lambda n: res[n]["median"])
                for who in ("ours", "diffusers")}
        mirror = [n for n in res if n.startswith("diffusers") and "stock" not in n]
        best_mirror = max(mirror, key=lambda n: res[n]["median"])
        plain = max((n for n in mirror if "our" not in n), key=lambda n: res[n]["median"])
        stock = [n for n in res if "stock" in n]
        best_stock = [max(stock, key=lambda n: res[n]["median"])] if stock else []
        for d in dict.fromkeys([best_mirror, plain, *best_stock]):
            print(f"\nratio: {best['ours']} / {d} = {res[best['ours']]['median'] / res[d]['median']:.2f}× "
                  f"(median img/s), {res[best['ours']]['per_cpu_s'] / res[d]['per_cpu_s']:.2f}× per CPU-second")
        check_ours(args.check_steps)
    else:
        base = next(iter(res.values()))["median"]
        print("\n" + "\n".join(f"{n}: {r['median'] / base:.2f}× of all levers" for n, r in res.items()))


if __name__ == "__main__":
    main()
