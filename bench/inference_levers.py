"""Sampling speed on this CPU: which settings make a network evaluation (NFE) of a shipped model fastest,
and does the fastest one keep the images?

Sections (one per sub-command; each fits in a few minutes on 2 cores):

- ``nfe``: seconds per guided network evaluation (classifier-free guidance: one call on a batch of 2B)
  for a sample batch B, under ``torch.inference_mode``: fp32; bf16 autocast (attention kept fp32, as
  nets/cpu.py does); the same with self-attention in bf16; weights cast to bf16 (no autocast: parameters
  bf16, each layer's inputs cast on entry, buffers such as the noise-embedding frequencies kept fp32);
  channels_last (fp32, bf16); 1 thread instead of 2 (fp32, bf16); CFG as two calls of B instead of one
  of 2B (fp32, bf16); bf16 under ``torch.no_grad`` (what ``generate`` used) instead of inference mode.
  After 2 untimed calls each, rounds run every contender once in turn; median (and quartiles) over
  rounds, ratio = fp32 median / contender median. Output error vs fp32 on the same input: max |Δx̂₀|
  and relative RMS ‖Δ‖/‖x̂₀‖. The input is a mid-grid state (σ of step 10 of 20, Karras grid).
- ``sample``: seconds for a whole ``generate()`` call (DPM-Solver++(2M), 20 steps, Karras, the model's
  guidance) of n images, fp32 vs bf16 (vs bf16 on 1 thread), interleaved rounds.
- ``compile``: ``torch.compile`` of the network (inference only), fp32 and bf16 autocast, in a fresh
  process with an empty inductor cache (a user's first CLI call) and again with that cache filled (a
  later one): the first call (compile) per batch shape, then steady-state NFE interleaved with eager.
- ``process``: process-wide settings, one process per setting, processes alternated in rounds:
  ``torch.set_num_interop_threads`` 1 vs the default 2; ``keep_freed_memory()`` (glibc keeps freed
  pages instead of faulting fresh ones in for every activation over 32 MiB).
- ``quality``: the same seeds sampled in fp32 and in bf16 through ``generate``: max/mean |Δ| of the
  final images (in [-1, 1] and in 8-bit levels), for Fashion-MNIST the shipped classifier's
  recognition of the asked class for both (and ``--fid``: Fréchet distance of each to test images);
  whether a sample drawn alone equals the same seed drawn in a batch (8-bit PNG levels); figures.

Run each timed section with the training job paused and the bench lock held::

    flock /tmp/undiffuse-bench.lock bash -c 'P=$(cat runs/emoji-train.pid); kill -STOP $P; \\
        trap "kill -CONT $P" EXIT; .venv/bin/python bench/inference_levers.py nfe --model fashion-mnist'
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from undiffuse.denoiser import with_precision
from undiffuse.guidance import null_labels, null_text
from undiffuse.images import make_grid, save_png
from undiffuse.models import LoadedModel, build_denoiser, load_model
from undiffuse.nets.blocks import AttentionBlock
from undiffuse.sampling import SampleRequest, cond_for, generate, guided_denoiser

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red heart"
PROMPTS = ["a red heart", "a smiling yellow face with sunglasses", "a green tree", "a blue car",
           "a slice of pizza", "a crying face", "a cat", "the moon at night"]


# --------------------------------------------------------------------------- helpers
def request(model: LoadedModel, n: int, precision: str = "fp32", **kw) -> SampleRequest:
    """The CLI's request for this model: 20 steps, DPM-Solver++(2M), Karras, the model's guidance."""
    prompt = PROMPT if model.text_conditioned else None
    return SampleRequest(n=n, steps=20, sampler="dpmpp_2m", grid="karras", guidance=model.config.sample.guidance,
                         prompt=prompt, precision=precision, **kw)


def with_denoiser(model: LoadedModel, denoiser: nn.Module) -> LoadedModel:
    """The same model with another denoiser (the text encoder shared, not reloaded)."""
    other = replace(model, denoiser=denoiser)
    other._encoder = getattr(model, "_encoder", None)
    return other


def with_net(model: LoadedModel, net: nn.Module) -> LoadedModel:
    return with_denoiser(model, build_denoiser(model.config, net))


def bf16_weights(net: nn.Module) -> nn.Module:
    """A copy with bf16 parameters; every layer with parameters casts its floating inputs to bf16 on entry.
    Buffers stay fp32 (the noise-embedding frequencies in bf16 would put t ≈ 999 off by radians)."""
    net = copy.deepcopy(net)
    for p in net.parameters():
        p.data = p.data.to(torch.bfloat16)

    def cast(_module, args, kwargs):
        def c(v):
            return v.to(torch.bfloat16) if isinstance(v, Tensor) and v.is_floating_point() else v
        return tuple(c(a) for a in args), {k: c(v) for k, v in kwargs.items()}

    for m in net.modules():
        if any(True for _ in m.parameters(recurse=False)):
            m.register_forward_pre_hook(cast, with_kwargs=True)
    return net


def bf16_self_attention(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, AttentionBlock):
            m.fp32_attention = False
    return net


class TwoCallCFG(nn.Module):
    """Classifier-free guidance as two calls of B (conditional, then unconditional) instead of one of 2B."""

    def __init__(self, inner: nn.Module, scale: float, uncond: Callable[[Any], Any]):
        super().__init__()
        self.inner, self.scale, self.uncond = inner, scale, uncond

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        c = self.inner(x, sigma, cond)
        u = self.inner(x, sigma, self.uncond(cond))
        return u + self.scale * (c - u)


def setup(model: LoadedModel, batch: int, precision: str = "fp32", net_model: LoadedModel | None = None):
    """(guided denoiser, x, σ, cond) for one mid-grid NFE of a batch; ``net_model`` supplies another net."""
    req = request(model, batch, precision)
    denoiser, labels, text = guided_denoiser(net_model or model, req)
    sigmas = model.sigmas(20, "karras")
    g = torch.Generator().manual_seed(0)
    shape = (batch, model.config.data.channels, model.config.data.image_size, model.config.data.image_size)
    x = torch.randn(shape, generator=g) * float(sigmas[10])
    sigma = torch.full((batch,), float(sigmas[10]))
    return denoiser, x, sigma, cond_for(labels, text, range(batch))


def uncond_fn(model: LoadedModel) -> Callable[[Any], Any]:
    return null_text(model.text_encoder()([""])) if model.text_conditioned else null_labels


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def threads(n: int):
    class _T:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.old)
    return _T()


def cpu_idle(seconds: float = 2.0) -> float:
    """Fraction of all cores' time idle over the next ``seconds`` (/proc/stat)."""
    def snap():
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return f[3] + f[4], sum(f)
    i0, t0 = snap()
    time.sleep(seconds)
    i1, t1 = snap()
    return (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(max_wait: float = 120.0, idle: float = 0.8) -> None:
    """Wait (up to ``max_wait`` s) until the machine is idle: other jobs sharing the cores skew 2-thread timings."""
    t0 = time.perf_counter()
    while (f := cpu_idle()) < idle and time.perf_counter() - t0 < max_wait:
        pass
    print(f"(waited {time.perf_counter() - t0:.0f} s for an idle machine: {f:.0%} idle)", flush=True)


CPU_TIMES: dict[str, list[float]] = {}   # process CPU seconds per call, beside the wall times


def busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat, all cores)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


DISCARDED: list[int] = []   # rounds thrown away per timed_rounds call


def timed_rounds(contenders: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2,
                 max_other: float = 0.15, budget: float = 420.0) -> dict[str, list[float]]:
    """``rounds`` interleaved rounds in which other processes used < ``max_other`` of a core; rounds in which
    they used more are discarded (tried for up to ``budget`` seconds): jobs sharing the 2 cores stall 2-thread
    runs (a 2-thread fp32 NFE took 2.5× the CPU time of a 1-thread one while another job ran)."""
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    kept = discarded = 0
    while kept < rounds and (time.perf_counter() - start < budget or kept + discarded < rounds):
        order = list(contenders) if (kept + discarded) % 2 == 0 else list(reversed(contenders))
        wall, cpu = {}, {}
        b0, p0, r0 = busy_seconds(), time.process_time(), time.perf_counter()
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            contenders[name]()
            wall[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        other = (busy_seconds() - b0 - (time.process_time() - p0)) / (time.perf_counter() - r0)
        if other > max_other:
            discarded += 1
            print(f"  (round discarded: other processes used {other:.2f} of a core)", flush=True)
            continue
        kept += 1
        for name in order:
            times[name].append(wall[name])
            CPU_TIMES.setdefault(name, []).append(cpu[name])
    DISCARDED.append(discarded)
    if not kept:   # never quiet: keep the last round, flagged by the discard count
        for name in order:
            times[name].append(wall[name])
    return times


def print_table(title: str, times: dict[str, list[float]], ref: str, extra: dict[str, str] | None = None,
                unit: str = "s/NFE") -> list[dict]:
    print(f"\n{title}; {DISCARDED[-1] if DISCARDED else 0} disturbed rounds discarded")
    head = f"| contender | {unit} median | (q1–q3) | best | vs {ref} | CPU-s per call |"
    head += " output vs fp32 |" if extra else ""
    print(head)
    print("|---|---|---|---|---|---|" + ("---|" if extra else ""))
    ref_med = statistics.median(times[ref])
    rows = []
    for name, ts in times.items():
        q1, med, q3 = quartiles(ts)
        cpu = CPU_TIMES.pop(name, [])
        row = f"| {name} | {med:.3f} | {q1:.3f}–{q3:.3f} | {min(ts):.3f} | {ref_med / med:.2f}× | " + \
            (f"{statistics.median(cpu):.3f} |" if cpu else "– |")
        if extra:
            row += f" {extra.get(name, '')} |"
        print(row)
        rows.append({"contender": name, "median": med, "q1": q1, "q3": q3, "ratio": ref_med / med,
                     "times": ts, "error": (extra or {}).get(name)})
    sys.stdout.flush()
    return rows


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), **payload}
        Path(path).write_text(json.dumps(payload, indent=1))


# --------------------------------------------------------------------------- nfe
def nfe_contenders(model: LoadedModel, batch: int) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    net = model.denoiser.net
    fp32 = setup(model, batch, "fp32")
    bf16 = setup(model, batch, "bf16")
    attn = setup(model, batch, "bf16", with_net(model, bf16_self_attention(net)))
    weights = setup(model, batch, "fp32", with_net(model, bf16_weights(net)))
    cl_model = with_net(model, copy.deepcopy(net).to(memory_format=torch.channels_last))
    cl32, cl16 = setup(model, batch, "fp32", cl_model), setup(model, batch, "bf16", cl_model)
    scale, unc = model.config.sample.guidance, uncond_fn(model)
    two32 = TwoCallCFG(model.denoiser, scale, unc)
    two16 = TwoCallCFG(with_precision(model.denoiser, "bf16"), scale, unc)
    x, s, c = fp32[1], fp32[2], fp32[3]
    xcl = x.contiguous(memory_format=torch.channels_last)

    def one_thread(d):
        def run():
            with threads(1):
                return d(x, s, c)
        return run

    def no_grad_bf16():
        with torch.inference_mode(False), torch.no_grad():
            return bf16[0](x, s, c)

    contenders = {
        "fp32": lambda: fp32[0](x, s, c),
        "bf16 autocast (attention fp32)": lambda: bf16[0](x, s, c),
        "bf16 autocast, self-attention bf16": lambda: attn[0](x, s, c),
        "bf16 weights, no autocast": lambda: weights[0](x, s, c),
        "fp32 channels_last": lambda: cl32[0](xcl, s, c),
        "bf16 autocast channels_last": lambda: cl16[0](xcl, s, c),
        "fp32, 1 thread": one_thread(fp32[0]),
        "bf16 autocast, 1 thread": one_thread(bf16[0]),
        "fp32, CFG as 2 calls of B": lambda: two32(x, s, c),
        "bf16 autocast, CFG as 2 calls of B": lambda: two16(x, s, c),
        "bf16 autocast, torch.no_grad": no_grad_bf16,
    }
    ref = contenders["fp32"]()
    errors = {}
    for name, fn in contenders.items():
        out = fn().float()
        d = out - ref
        errors[name] = f"max {d.abs().max():.4f}, rel RMS {float(d.norm() / ref.norm()):.2%}"
    return contenders, errors


def cmd_nfe(args) -> None:
    results = []
    for name in args.model:
        model = load_model(name)
        for batch in args.batch:
            contenders, errors = nfe_contenders(model, batch)
            wait_quiet()
            times = timed_rounds(contenders, args.rounds)
            title = (f"{name}, sample batch {batch} (network batch {2 * batch} with CFG), "
                     f"{args.rounds} rounds, {torch.get_num_threads()} threads")
            rows = print_table(title, times, "fp32", errors)
            results.append({"model": name, "batch": batch, "rows": rows})
    write_json(args.json, {"section": "nfe", "results": results})


# --------------------------------------------------------------------------- sample
def cmd_sample(args) -> None:
    if args.no_keep_memory:   # the process state before generate() called keep_freed_memory()
        import undiffuse.sampling
        undiffuse.sampling.keep_freed_memory = lambda: False
    memory = "glibc defaults" if args.no_keep_memory else "keep_freed_memory()"
    results = []
    for name in args.model:
        model = load_model(name)
        if model.text_conditioned:
            model.text_encoder()
        for n in args.n:
            contenders = {
                "fp32": lambda m=model, n=n: generate(m, request(m, n, "fp32"), progress=False),
                "bf16 autocast": lambda m=model, n=n: generate(m, request(m, n, "bf16"), progress=False),
            }
            if n <= 16:
                def one(m=model, n=n):
                    with threads(1):
                        return generate(m, request(m, n, "bf16"), progress=False)
                contenders["bf16 autocast, 1 thread"] = one
            wait_quiet()
            times = timed_rounds(contenders, args.rounds, warmup=1)
            rows = print_table(f"{name}: generate() of n = {n}, 20 steps, CFG, {args.rounds} rounds, {memory}", times,
                               "fp32", unit="s/call")
            for r in rows:
                print(f"  {r['contender']}: {r['median'] / n * 1000:.0f} ms per image")
            results.append({"model": name, "n": n, "rows": rows})
    write_json(args.json, {"section": "sample", "memory": memory, "results": results})


# --------------------------------------------------------------------------- compile
def compile_worker(args) -> None:
    """In a fresh process: compile, time first calls per shape, then steady state vs eager."""
    model = load_model(args.model[0])
    batch, other = args.batch[0], args.other_batch
    out: dict[str, Any] = {"cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "first_calls": {}}
    contenders: dict[str, Callable[[], Tensor]] = {}
    errors = {}
    wait_quiet()
    for precision in ("fp32", "bf16"):
        eager = setup(model, batch, precision)
        compiled_net = torch.compile(model.denoiser.net)
        comp = setup(model, batch, precision, with_net(model, compiled_net))
        t0 = time.perf_counter()
        y = comp[0](comp[1], comp[2], comp[3])
        first = time.perf_counter() - t0
        ref = eager[0](eager[1], eager[2], eager[3])
        errors[f"compiled {precision}"] = f"max {float((y - ref).abs().max()):.4f} vs eager {precision}"
        comp2 = setup(model, other, precision, with_net(model, compiled_net))
        t0 = time.perf_counter()
        comp2[0](comp2[1], comp2[2], comp2[3])
        second = time.perf_counter() - t0
        out["first_calls"][precision] = {f"batch {batch}": first, f"batch {other}": second}
        print(f"compile {precision}: first call batch {batch}: {first:.1f} s, then batch {other}: {second:.1f} s",
              flush=True)
        contenders[f"eager {precision}"] = lambda e=eager: e[0](e[1], e[2], e[3])
        contenders[f"compiled {precision}"] = lambda c=comp: c[0](c[1], c[2], c[3])
    wait_quiet()
    times = timed_rounds(contenders, args.rounds)
    out["rows"] = print_table(f"{args.model[0]}, batch {batch} (network {2 * batch}), compiled vs eager", times,
                              "eager fp32", errors)
    Path(args.json).write_text(json.dumps(out))


def cmd_compile(args) -> None:
    cache = tempfile.mkdtemp(prefix="inductor-cold-")
    results = []
    for label in ("cold cache (a first CLI call)", "warm cache (a later CLI call)"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            cmd = [sys.executable, __file__, "compile-worker", "--model", args.model[0], "--batch", str(args.batch[0]),
                   "--other-batch", str(args.other_batch), "--rounds", str(args.rounds), "--json", f.name]
            print(f"\n## {label}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            results.append({"cache": label, **json.loads(Path(f.name).read_text())})
    write_json(args.json, {"section": "compile", "model": args.model[0], "results": results})


# --------------------------------------------------------------------------- process settings
PROCESS_SETTINGS = {"default (interop threads 2)": [], "interop threads 1": ["--interop", "1"],
                    "keep_freed_memory()": ["--keep-memory"]}


def process_worker(args) -> None:
    if args.keep_memory:
        from undiffuse.nets.cpu import keep_freed_memory
        keep_freed_memory()
    model = load_model(args.model[0])
    runs = {p: setup(model, args.batch[0], p) for p in ("fp32", "bf16")}
    wait_quiet()
    times = timed_rounds({p: (lambda r=r: r[0](r[1], r[2], r[3])) for p, r in runs.items()}, args.rounds)
    Path(args.json).write_text(json.dumps({"times": times, "discarded": DISCARDED[-1]}))


def cmd_process(args) -> None:
    """Process-wide settings, one process per setting, processes alternated (``--procs`` each)."""
    times: dict[str, list[float]] = {}
    discarded = 0
    for _ in range(args.procs):
        for label, extra in PROCESS_SETTINGS.items():
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([sys.executable, __file__, "process-worker", "--model", args.model[0], "--batch",
                                str(args.batch[0]), "--rounds", str(args.rounds), "--json", f.name, *extra],
                               check=True, stdout=subprocess.DEVNULL)
                got = json.loads(Path(f.name).read_text())
                for p, ts in got["times"].items():
                    times.setdefault(f"{p}, {label}", []).extend(ts)
                discarded += got["discarded"]
    DISCARDED.append(discarded)
    rows = print_table(f"{args.model[0]}, batch {args.batch[0]} (network {2 * args.batch[0]}): process settings "
                       f"({args.procs} processes each, {args.rounds} rounds per process)", times,
                       "fp32, default (interop threads 2)")
    write_json(args.json, {"section": "process", "rows": rows})


# --------------------------------------------------------------------------- quality
def image_diff(a: Tensor, b: Tensor) -> dict[str, float]:
    d = (a - b).abs()
    qa, qb = ((a.clamp(-1, 1) + 1) * 127.5).round(), ((b.clamp(-1, 1) + 1) * 127.5).round()
    dq = (qa - qb).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_levels": float(dq.max()),
            "mean_levels": float(dq.mean()), "pixels_differing": float((dq > 0).float().mean())}


def fmt_diff(d: dict[str, float]) -> str:
    return (f"max |Δ| {d['max_abs']:.4f} ({d['max_levels']:.0f} levels of 255), mean |Δ| {d['mean_abs']:.5f} "
            f"({d['mean_levels']:.3f} levels), pixels differing in 8 bits {d['pixels_differing']:.1%}")


def alone_vs_batch(model: LoadedModel, images: Tensor, precision: str, count: int) -> tuple[int, int]:
    """How many of ``count`` seeds among the first batch, drawn alone (n = 1, same seed, class or prompt), equal
    their image from the batch in 8 bits; (equal, tried). ``images`` start at seed 0 (the first prompt's)."""
    picks = list(range(0, min(len(images), 64), max(1, min(len(images), 64) // count)))[:count]
    same = 0
    for i in picks:
        extra = {"label": i % model.num_classes} if model.num_classes else {}
        one, _ = generate(model, request(model, 1, precision, seed=i, **extra), progress=False)
        q = ((torch.stack([one[0], images[i]]).clamp(-1, 1) + 1) * 127.5).round()
        same += bool(torch.equal(q[0], q[1]))
    return same, len(picks)


def cmd_quality(args) -> None:
    torch.manual_seed(0)
    out: dict[str, Any] = {"section": "quality"}
    for name in args.model:
        model = load_model(name)
        res: dict[str, Any] = {}
        imgs: dict[str, Tensor] = {}
        if model.num_classes:
            from undiffuse.evaluation.classifier import load_classifier
            from undiffuse.evaluation.recognition import class_recognition
            clf = load_classifier()
            for p in ("fp32", "bf16"):
                t0 = time.perf_counter()
                rec = class_recognition(model, clf, request(model, args.n[0], p), progress=False)
                imgs[p] = rec.images
                res[p] = {"recognition": rec.accuracy, "seconds": time.perf_counter() - t0,
                          "predicted": rec.predicted.tolist()}
                print(f"{name} {p}: recognised {rec.accuracy:.1%} of {rec.n} ({res[p]['seconds']:.0f} s)", flush=True)
            agree = float((torch.tensor(res["fp32"]["predicted"]) == torch.tensor(res["bf16"]["predicted"])).float()
                          .mean())
            res["prediction_agreement"] = agree
            print(f"  the classifier gives the same class to the fp32 and bf16 image of a seed: {agree:.1%}")
        else:
            for p in ("fp32", "bf16"):
                rows = []
                t0 = time.perf_counter()
                for k, prompt in enumerate(PROMPTS):
                    req = replace(request(model, args.per_prompt, p), prompt=prompt, seed=100 * k)
                    rows.append(generate(model, req, progress=False)[0])
                imgs[p] = torch.cat(rows)
                res[p] = {"seconds": time.perf_counter() - t0}
                print(f"{name} {p}: {len(imgs[p])} samples, {len(PROMPTS)} prompts ({res[p]['seconds']:.0f} s)",
                      flush=True)
        res["diff"] = image_diff(imgs["fp32"], imgs["bf16"])
        per = (imgs["fp32"] - imgs["bf16"]).abs().flatten(1).amax(1)
        res["per_image_max_abs"] = {"median": float(per.median()), "max": float(per.max())}
        print(f"  fp32 vs bf16, same seeds: {fmt_diff(res['diff'])}; per-image max |Δ| median "
              f"{float(per.median()):.4f}, worst {float(per.max()):.4f}", flush=True)
        if args.fid and model.num_classes:
            from undiffuse.data.fashion_mnist import load_fashion_mnist
            from undiffuse.evaluation.fid import fid_from_features
            from undiffuse.evaluation.inception import InceptionFeatures
            inc = InceptionFeatures()
            test = load_fashion_mnist("test", model.config.data.image_size, limit=args.fid).images.float() / 127.5 - 1
            ref = inc(test)
            for p in ("fp32", "bf16"):
                res[p]["fid"] = fid_from_features(inc(imgs[p]), ref)
                print(f"  Fréchet distance to {args.fid} test images, {p}: {res[p]['fid']:.2f}", flush=True)
        # Does a seed drawn alone equal the same seed drawn in a batch (8-bit levels)?
        for p in ("fp32", "bf16"):
            first = imgs[p] if model.num_classes else imgs[p][:args.per_prompt]   # the first prompt's batch
            same, picks = alone_vs_batch(model, first, p, args.alone)
            res[f"alone_equals_batch_{p}"] = f"{same}/{picks}"
            print(f"  {p}: {same} of {picks} seeds drawn alone equal their image from a batch in 8 bits", flush=True)
        if args.figure_dir:   # the first samples (2 per prompt for text), then the 4 that differ most
            first = torch.arange(20) if model.num_classes else \
                (torch.arange(len(PROMPTS))[:, None] * args.per_prompt + torch.arange(2)).flatten()
            worst = per.argsort(descending=True)[:4]
            a, b = imgs["fp32"][torch.cat([first, worst])], imgs["bf16"][torch.cat([first, worst])]
            diff = ((a - b).abs() * 20 - 1).clamp(-1, 1)   # |Δ| × 10 in [0, 1] → [-1, 1]
            grid = make_grid(torch.cat([a, b, diff]), nrow=len(a))
            path = save_png(Path(args.figure_dir) / f"inference-precision-{name}.png", grid,
                            {"rows": "fp32 / bf16 autocast / |difference| x10", "model": name,
                             "columns": f"the first samples, then the 4 that differ most (indices {worst.tolist()})"},
                            scale=3)
            print(f"  figure: {path}")
        out[name] = res
    write_json(args.json, out)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["nfe", "sample", "compile", "process", "quality",
                                        "compile-worker", "process-worker"])
    ap.add_argument("--model", nargs="+", default=["fashion-mnist", "emoji-dit"])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 8], help="sample batch (CFG doubles it)")
    ap.add_argument("--n", type=int, nargs="+", default=[100], help="sample: images per call; quality: samples")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--other-batch", type=int, default=36, help="compile: the second batch shape (n=100: 64 + 36)")
    ap.add_argument("--interop", type=int, default=0, help="process-worker: interop threads (0: torch's default)")
    ap.add_argument("--keep-memory", action="store_true", help="process-worker: call keep_freed_memory()")
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="sample: stop generate() calling keep_freed_memory() (the state before it did)")
    ap.add_argument("--procs", type=int, default=3, help="process: processes per setting")
    ap.add_argument("--per-prompt", type=int, default=8, help="quality, text model: samples per prompt")
    ap.add_argument("--alone", type=int, default=6, help="quality: seeds redrawn alone")
    ap.add_argument("--fid", type=int, default=0, help="quality: Fréchet distance to this many test images")
    ap.add_argument("--figure-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.interop:   # before any parallel work, or torch refuses
        torch.set_num_interop_threads(args.interop)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({torch.get_num_interop_threads()} interop), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, 1-min load average {os.getloadavg()[0]:.2f}", flush=True)
    section = {"nfe": cmd_nfe, "sample": cmd_sample, "compile": cmd_compile, "process": cmd_process,
               "quality": cmd_quality, "compile-worker": compile_worker, "process-worker": process_worker}
    with torch.inference_mode():
        section[args.section](args)


if __name__ == "__main__":
    main()
