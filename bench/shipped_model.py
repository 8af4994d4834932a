"""Check a class-conditional Fashion-MNIST model: does it draw the class asked for, and are its images new?

1. Recognition: ``--per-class`` samples of every class (seeds 0, 1, …), sampled as the model card says
   (sampler, steps, σ grid, guidance and its interval; each can be overridden), scored by the shipped
   Fashion-MNIST classifier (92.9 % test accuracy). The issue's bar: ≥ 85 % recognised as the class asked for.
2. Novelty: each sample's distance to its nearest training image (all 60 000, pixel L2) against the
   same distance for unseen test images; a figure of samples beside their 3 nearest training images.

    .venv/bin/python bench/shipped_model.py                      # the shipped model, ~3 min on 2 cores
    .venv/bin/python bench/shipped_model.py --model runs/fashion-mnist --per-class 20

Writes docs/fashion-mnist-nearest.png and prints (and with --json writes) the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

from undiffuse.data.fashion_mnist import load_fashion_mnist
from undiffuse.evaluation.classifier import load_classifier
from undiffuse.evaluation.nearest import nearest_neighbours, novelty
from undiffuse.evaluation.recognition import class_recognition
from undiffuse.models import load_model
from undiffuse.plots import plot_nearest
from undiffuse.sampling import card_request, describe_guidance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="shipped name, run folder or checkpoint")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--sampler", default=None, help="default: the model card's")
    ap.add_argument("--steps", type=int, default=None, help="default: the model card's")
    ap.add_argument("--grid", default=None, help="default: the model card's")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model card's")
    ap.add_argument("--every-sigma", action="store_true", help="guide at every σ, not in the card's interval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default="docs/fashion-mnist-nearest.png")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    req = card_request(model, n=args.per_class * model.num_classes, seed=args.seed, sampler=args.sampler,
                       steps=args.steps, grid=args.grid, guidance=args.guidance)
    if args.every_sigma:
        req = replace(req, guidance_interval=None)
    t0 = time.perf_counter()
    rec = class_recognition(model, load_classifier(), req)
    seconds = time.perf_counter() - t0
    guided = describe_guidance(req.guidance, req.guidance_interval)
    guided += f", projected (APG η = {req.guidance_parallel:g})" if req.guidance_parallel != 1 else ""
    guided += f", ε̂ / {req.eps_scale:g}" if req.eps_scale != 1 else ""
    print(f"{args.model}: {req.n} samples, {req.sampler}, {req.steps} steps, {req.grid} grid, {guided}, "
          f"{seconds:.0f} s ({req.n / seconds:.1f} img/s)")
    print("recognised as the class asked for:")
    print(rec.table())

    size = model.config.data.image_size
    train = load_fashion_mnist("train", size).images.float() / 127.5 - 1
    test = load_fashion_mnist("test", size, limit=len(rec.images)).images.float() / 127.5 - 1
    nov = novelty(rec.images, train, test)
    print(nov.summary())

    rows = min(2, args.per_class)   # two samples of every class in the figure
    shown = torch.tensor([c + model.num_classes * r for r in range(rows) for c in range(model.num_classes)])
    dist, idx = nearest_neighbours(rec.images[shown], train, k=3)
    titles = [f"{model.class_names[int(rec.labels[i])]}, seed {args.seed + int(i)}" for i in shown]
    plot_nearest(rec.images[shown], train[idx], dist, titles, args.figure,
                 {"model": args.model, "sampler": req.sampler, "steps": req.steps, "grid": req.grid,
                  "guidance": guided},
                 test_median=nov.test_median)
    print(f"figure: {args.figure}")

    if args.json:
        result = {"model": args.model, "date": str(date.today()), "machine": platform.processor() or platform.machine(),
                  "threads": args.threads, "torch": torch.__version__, "request": vars(req), "seconds": seconds,
                  "accuracy": rec.accuracy, "per_class": rec.per_class, "confusion": rec.confusion,
                  "novelty": vars(nov)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
