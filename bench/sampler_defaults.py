"""Every sampler × step count on a shipped model, with the old and the new shared defaults: broken or not?

For each registered sampler and each step count, ``--n`` samples (classes in turn, seeds --seed, --seed+1, …, the
model's own guidance, bf16 autocast as ``sample`` by default) are drawn twice on each σ grid:

- **before**: the shared defaults until issue 15: Karras and exponential grids from the chain's last σ (2·10⁴ on
  the cosine chain) and every higher-order step taken whatever its length (``h_max = ∞``);
- **after**: today's defaults: those grids from min(σ_{T−1}, 80) (``process.GRID_SIGMA_MAX``) and steps longer than
  ``samplers.H_MAX`` (``H_MAX_RK`` for heun and dpm_2) in λ = −ln σ taken first order.

(The final step to σ = 0 lands on x̂0 in both: lms's last step, a polynomial to σ = 0 until then, is not restored.)
Per cell: the share recognised as the asked class by the shipped classifier (``fashion-mnist-classifier``), the
share of pixels beyond ±1.2 (broken samples saturate; healthy ones put ~0 there), NFE per sample (counted), and
with ``--fd`` the Fréchet distance of the classifier's features to ``--n-ref`` held-out test images
(``undiffuse.evaluation``; the floor, real vs real at the same n, is printed). Printed as Markdown tables; ``--json``
also writes the numbers.

    .venv/bin/python bench/sampler_defaults.py                                   # n = 100, ~1 h on 2 cores
    .venv/bin/python bench/sampler_defaults.py --n 200 --fd --grids karras,trailing --json \\
        bench/results/sampler-defaults.json                                        # ~4 h
    .venv/bin/python bench/sampler_defaults.py --n 4 --steps 5 --samplers euler,heun      # a smoke run
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from undiffuse import process, samplers
from undiffuse.evaluation.classifier import load_classifier
from undiffuse.evaluation.fid import fid_from_features
from undiffuse.evaluation.reference import reference_set
from undiffuse.models import LoadedModel, build_schedule, load_model
from undiffuse.sampling import SampleRequest, cond_for, guided_denoiser, request_sigmas

RANGE_GRIDS = ("karras", "exponential", "flow")  # the grids over a σ range, which the cap changed


def draw(model: LoadedModel, req: SampleRequest, sigma_max: float | None, opts: dict[str, Any],
         batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``sampling.generate``'s loop with a σ_max and sampler options: (images, labels, NFE per sample)."""
    sigmas = request_sigmas(model, SampleRequest(**{**vars(req), "sigma_max": sigma_max}))
    denoiser, labels, text = guided_denoiser(model, req)
    calls = 0

    def counted(x, sigma, cond=None):
        nonlocal calls
        calls += 1
        return denoiser(x, sigma, cond=cond)

    out, batches = [], range(0, req.n, batch_size)
    for start in batches:
        rows = range(start, min(start + batch_size, req.n))
        gens = samplers.make_generators([req.seed + i for i in rows])
        x = samplers.randn((len(rows), *model.space.shape), gens) * float(sigmas[0])
        fn = samplers.get(req.sampler)
        out.append(model.space.decode(fn(counted, x, sigmas, cond=cond_for(labels, text, rows), generator=gens,
                                         **opts)))
    return torch.cat(out), labels, calls / len(batches)


def settings(model: LoadedModel, name: str, grid: str) -> dict[str, tuple[float | None, dict[str, Any]]]:
    """(σ_max, sampler options) of the old and the new defaults."""
    schedule = build_schedule(model.config)
    old_max = schedule.sigma_max if schedule is not None and grid in RANGE_GRIDS else None
    has_h_max = "h_max" in inspect.signature(samplers.get(name).__wrapped__).parameters
    return {"before": (old_max, {"h_max": math.inf} if has_h_max else {}), "after": (None, {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="a class-conditional model the classifier fits")
    ap.add_argument("--samplers", default="", help="comma-separated (default: every registered sampler)")
    ap.add_argument("--steps", default="5,10,20,50")
    ap.add_argument("--grids", default="", help="comma-separated σ grids (default: the model's own)")
    ap.add_argument("--n", type=int, default=100, help="samples per cell (classes in turn)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fd", action="store_true", help="also the classifier-feature Fréchet distance")
    ap.add_argument("--n-ref", type=int, default=1000, help="real test images the FD compares with")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    classifier = load_classifier()
    names = [s for s in args.samplers.split(",") if s] or samplers.names()
    steps = [int(s) for s in args.steps.split(",")]
    grids = [g for g in args.grids.split(",") if g] or [model.config.sample.grid]
    guidance = model.config.sample.guidance
    real = floor = None
    if args.fd:
        ref = reference_set(model.config, args.n_ref)
        real = classifier.features(ref.a).double()
        floor = float(fid_from_features(real, classifier.features(ref.b[:args.n]).double()))
        print(f"FD floor: {args.n} other test images vs the {args.n_ref}: {floor:.2f}")

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for grid in grids:
        for name in names:
            for k in steps:
                req = SampleRequest(n=args.n, seed=args.seed, sampler=name, steps=k, grid=grid, guidance=guidance)
                for when, (sigma_max, opts) in settings(model, name, grid).items():
                    t0 = time.perf_counter()
                    images, labels, nfe = draw(model, req, sigma_max, opts, args.batch_size)
                    row = {"grid": grid, "sampler": name, "steps": k, "when": when, "nfe": nfe,
                           "seconds": time.perf_counter() - t0,
                           "saturated": float((images.abs() > 1.2).float().mean()),
                           "accuracy": float((classifier.predict(images.clamp(-1, 1)) == labels).float().mean())}
                    if real is not None:
                        row["fd"] = float(fid_from_features(real, classifier.features(images.clamp(-1, 1)).double()))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\n{len(rows)} cells in {time.perf_counter() - t_start:.0f} s; {args.model}, n = {args.n} per cell, "
          f"seeds {args.seed}–{args.seed + args.n - 1}, guidance {guidance:g}\n")
    print(tables(rows, grids, names, steps, args.fd))

    if args.json:
        result = {"model": args.model, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
                  "threads": args.threads, "torch": torch.__version__, "n": args.n, "seed": args.seed,
                  "guidance": guidance, "fd_floor": floor, "n_ref": args.n_ref if args.fd else None,
                  "grid_sigma_max": process.GRID_SIGMA_MAX, "h_max": samplers.H_MAX, "h_max_rk": samplers.H_MAX_RK,
                  "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def tables(rows: list[dict[str, Any]], grids: list[str], names: list[str], steps: list[int], fd: bool) -> str:
    """One Markdown table per grid and measure: a row per sampler, "before → after" per step count."""
    cell = {(r["grid"], r["sampler"], r["steps"], r["when"]): r for r in rows}
    measures = [("accuracy", "class accuracy", "{:.0%}"), ("saturated", "pixels beyond ±1.2", "{:.1%}"),
                ("nfe", "NFE per sample", "{:.0f}")] + ([("fd", "classifier-feature FD", "{:.1f}")] if fd else [])
    out = []
    for grid in grids:
        for key, title, fmt in measures:
            out += [f"**{grid} grid, {title}** (before → after)", "",
                    "| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |",
                    "|---|" + "---|" * len(steps)]
            for name in names:
                vals = [" → ".join(fmt.format(cell[grid, name, k, w][key]) for w in ("before", "after"))
                        for k in steps]
                out.append(f"| {name} | " + " | ".join(vals) + " |")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
