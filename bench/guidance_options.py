"""Guidance options on a shipped class-conditional model: FD and class accuracy with and without each, at equal NFE.

Rows (every one with the model's own sampler, grid and steps, the same seeds and class-balanced labels):
plain conditional (w = 1, one evaluation per step), classifier-free guidance at --weights, the guidance interval
(Kynkäänniemi et al. 2024) at --intervals (σ ranges in the model's space; outside them one evaluation), CFG
rescale (Lin et al. 2024) at --rescales on top of the model's guidance, and autoguidance (Karras et al. 2024)
with each --autoguide model (an earlier checkpoint of the same run) at --weights. NFE per sample is counted.
FD: Fréchet distance of the shipped classifier's features (``--features classifier``, fast) or of Inception's
(``--features inception``, the FID network; ~10 images/s here) to --n-ref held-out test images; the floor (real vs
real at the same n) is printed.

    .venv/bin/python bench/guidance_options.py --autoguide ~/runs/early-00002000.safetensors \\
        --json bench/results/guidance-options.json
    .venv/bin/python bench/guidance_options.py --n 300 --features classifier --intervals "0.3,5" --rescales 0.7 \
        --autoguide ~/runs/fashion-mnist-3level --autoguide-weights 2 \
        --json bench/results/guidance-options.json          # bench/README.md's run (~10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from undiffuse.evaluation.classifier import load_classifier
from undiffuse.evaluation.fid import fid_from_features
from undiffuse.evaluation.inception import InceptionFeatures
from undiffuse.evaluation.reference import reference_set
from undiffuse.models import load_model
from undiffuse.sampling import SampleRequest, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-ref", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--weights", default="1.5,2,3")
    ap.add_argument("--intervals", default="0.3,5;0.3,20;1,80", help="LO,HI pairs separated by ';' (at the "
                    "model's guidance and at the largest --weights)")
    ap.add_argument("--rescales", default="0.5,0.7")
    ap.add_argument("--autoguide", default="", help="comma-separated weaker models of the same kind")
    ap.add_argument("--autoguide-weights", default="", help="the weights of the autoguidance rows (default: --weights)")
    ap.add_argument("--features", choices=("classifier", "inception"), default="inception")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    card = model.config.sample
    classifier = load_classifier()
    extract = (lambda x: classifier.features(x).double()) if args.features == "classifier" else InceptionFeatures()
    ref = reference_set(model.config, args.n_ref)
    real = extract(ref.a)
    floor = float(fid_from_features(real, extract(ref.b[:args.n])))
    print(f"{args.features} FD floor: {args.n} test images vs {args.n_ref} others: {floor:.2f}", flush=True)

    weights = [float(w) for w in args.weights.split(",") if w]
    rows_spec: list[tuple[str, dict[str, Any]]] = [("plain conditional", {"guidance": 1.0})]
    rows_spec += [(f"CFG w = {w:g}", {"guidance": w}) for w in weights]
    for text in filter(None, args.intervals.split(";")):
        lo, hi = (float(v) for v in text.split(","))
        for w in sorted({card.guidance, max(weights)}):
            rows_spec.append((f"CFG w = {w:g}, interval σ ∈ [{lo:g}, {hi:g}]",
                              {"guidance": w, "guidance_interval": (lo, hi)}))
    rescales = [float(phi) for phi in args.rescales.split(",") if phi]
    rows_spec += [(f"CFG w = {w:g}, rescale φ = {phi:g}", {"guidance": w, "guidance_rescale": phi})
                  for w in sorted({card.guidance, max(weights)}) for phi in rescales]
    auto_weights = [float(w) for w in args.autoguide_weights.split(",") if w] or weights
    for guide in filter(None, args.autoguide.split(",")):
        rows_spec += [(f"autoguidance by {Path(guide).name}, w = {w:g}", {"guidance": w, "autoguide": guide})
                      for w in auto_weights]

    calls = {"rows": 0}

    def count(module, inputs):  # rows every network sees, the guide's too: rows / n = NFE per sample
        calls["rows"] += len(inputs[0])
    model.denoiser.net.register_forward_pre_hook(count)
    guides = {}
    for g in filter(None, args.autoguide.split(",")):
        guides[g] = load_model(g)
        guides[g].denoiser.net.register_forward_pre_hook(count)
    rows = []
    for name, opts in rows_spec:
        guide = guides.get(opts.get("autoguide"))
        req = SampleRequest(n=args.n, seed=args.seed, sampler=card.sampler, steps=card.steps, grid=card.grid,
                            batch_size=100, **{k: v for k, v in opts.items() if k != "autoguide"})
        calls["rows"] = 0
        t0 = time.perf_counter()
        images, labels = generate(model, req, progress=False, guide=guide)
        seconds = time.perf_counter() - t0
        nfe = calls["rows"] / args.n
        fd = float(fid_from_features(real, extract(images.clamp(-1, 1))))
        acc = float((classifier.predict(images.clamp(-1, 1)) == labels).float().mean())
        rows.append({"setting": name, **{k: v for k, v in opts.items() if k != "autoguide"}, "nfe": nfe, "fd": fd,
                     "accuracy": acc, "sample_s": seconds})
        print(f"{name:<50} NFE {nfe:5.1f}  FD {fd:7.2f}  acc {100 * acc:5.1f} %  ({seconds:.0f} s)", flush=True)

    print(f"\n### Guidance options on `{args.model}` (run {time.strftime('%Y-%m-%d %H:%M')}; {card.sampler}, "
          f"{card.steps} steps, {card.grid} grid; n = {args.n}, seeds {args.seed}–{args.seed + args.n - 1}; "
          f"{args.features} FD, floor {floor:.2f})\n")
    print("| setting | NFE | FD | class accuracy |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['nfe']:.1f} | {r['fd']:.2f} | {100 * r['accuracy']:.1f} % |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model,
                                         "machine": platform.processor() or platform.machine(), "n": args.n,
                                         "features": args.features, "floor_fd": floor, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
