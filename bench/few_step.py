"""Few-step generation: a distilled student at 1, 2 and 4 NFE against its teacher with our samplers and diffusers'.

One run, the Fréchet-distance setup of bench/peers.py (Inception features; reference: the first --n-ref/10
Fashion-MNIST test images of every class; the floor is the next --n/10 per class against it, printed), the same
seeds and class-balanced labels for every row. NFE = network evaluations per sample, counted (classifier-free
guidance costs two per step; the student has guidance distilled in and takes one). Per row also the share the
shipped classifier recognises as the asked class, and the seconds of sampling.

- student: multistep consistency sampling on its ``distilled`` grid at 1, 2 and 4 steps;
- teacher, ours: --ours samplers (name:grid) at the --teacher-nfes budgets, guided at the teacher's guidance
  (steps = NFE / 2) and unguided (steps = NFE), with its card's guidance projection η and ε scaling;
- teacher, diffusers: --diffusers schedulers (as in peers.py: Name[+trailing|+karras|+thresholding]) driving the
  teacher's network in its latent space with the same guidance, each step ``cfg = u + w (c - u)`` on the
  network's v output as diffusers' pipelines do, then our decoder; at each --diffusers-guidance weight (plain
  guidance is best at a lower weight than projected guidance: the table's best row is diffusers' best).

    .venv/bin/python bench/few_step.py --student ~/runs/fashion-mnist-fast --json bench/results/few-step.json
    .venv/bin/python bench/few_step.py --student ~/runs/fashion-mnist-fast --n 100 --diffusers DPMSolverMultistep
    .venv/bin/python bench/few_step.py --student ~/runs/fast3 --ours unipc:trailing --interval \
        --diffusers UniPCMultistep,DPMSolverMultistep --no-unguided \
        --json bench/results/few-step-3000.json                          # bench/README.md: the run at 3 000 steps
    .venv/bin/python bench/few_step.py --student ~/runs/fast3 --ours "" --diffusers UniPCMultistep --no-unguided \
        --json bench/results/few-step.json                               # the shipped student's rows
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import peers  # bench/ is on sys.path when this file runs as a script
import torch
from torch import Tensor

from undiffuse import samplers
from undiffuse.evaluation.classifier import load_classifier, predict
from undiffuse.evaluation.fid import fid_from_features
from undiffuse.evaluation.inception import InceptionFeatures
from undiffuse.guidance import parse_interval
from undiffuse.models import LoadedModel, load_model
from undiffuse.sampling import card_request, generate

BATCH = 100


class Counter:
    """Counts the rows a network sees (a forward pre-hook): rows / n = NFE per sample."""

    def __init__(self, net: torch.nn.Module):
        self.rows = 0
        net.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.rows += len(args[0])


EVERY_SIGMA = (0.0, float("inf"))  # a guidance interval that covers every σ: plain guidance


def ours(model: LoadedModel, sampler: str, grid: str, steps: int, guidance: float, n: int, seed: int,
         interval: tuple[float, float] = EVERY_SIGMA) -> Tensor:
    """Our ``sampler`` on ``model`` with the card's guidance projection η and ε scaling (at ``guidance``, guided in
    ``interval``)."""
    req = card_request(model, n=n, seed=seed, sampler=sampler, steps=steps, grid=grid, guidance=guidance,
                       batch_size=BATCH, guidance_interval=interval)
    images, _ = generate(model, req, progress=False)
    return images


def steps_within(model: LoadedModel, grid: str, budget: int, interval: tuple[float, float]) -> int:
    """The most steps of a one-evaluation-per-step sampler whose guided NFE (two inside the interval, one
    outside) stay within ``budget``."""
    steps = budget // 2
    while True:
        sigmas = model.sigmas(steps + 1, grid)[:-1].tolist()
        if steps + 1 + sum(interval[0] <= s <= interval[1] for s in sigmas) > budget:
            return steps
        steps += 1


def theirs(model: LoadedModel, spec: str, steps: int, guidance: float, n: int, seed: int) -> Tensor:
    """diffusers' scheduler ``spec`` on the teacher's network, guided, in the teacher's space, decoded by ours."""
    make = peers.diffusers_scheduler(spec)
    net, shape = model.denoiser.net, model.space.shape
    labels = torch.arange(n) % model.num_classes
    out = []
    for s in range(0, n, BATCH):
        idx = range(s, min(s + BATCH, n))
        eps = samplers.randn((len(idx), *shape), samplers.make_generators([seed + i for i in idx]))
        sched = make()
        sched.set_timesteps(steps)
        x, c = eps * sched.init_noise_sigma, labels[s:s + len(idx)]
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            tb = torch.as_tensor(t, dtype=torch.float32).expand(len(x))
            if guidance != 1.0:
                both = net(torch.cat([xin, xin]), torch.cat([tb, tb]), torch.cat([c, torch.full_like(c, -1)]))
                cond, uncond = both.chunk(2)
                v = uncond + guidance * (cond - uncond)
            else:
                v = net(xin, tb, c)
            x = sched.step(v.float(), t, x).prev_sample
        out.append(model.space.decode(x))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="fashion-mnist")
    ap.add_argument("--student", required=True, help="the distilled model (run folder, file or shipped name)")
    ap.add_argument("--n", type=int, default=1000, help="generated images per row (a multiple of 10)")
    ap.add_argument("--n-ref", type=int, default=1000, help="real test images in the reference set")
    ap.add_argument("--student-steps", default="1,2,4")
    ap.add_argument("--teacher-nfes", default="10,20")
    ap.add_argument("--ours", default="dpmpp_2m:karras,unipc:karras,dpmpp_2m:trailing",
                    help="our samplers on the teacher, name:grid, comma-separated (\"\": none)")
    ap.add_argument("--diffusers", default="DPMSolverMultistep,UniPCMultistep,DDIM+trailing,EulerDiscrete")
    ap.add_argument("--diffusers-nfes", default="20")
    ap.add_argument("--diffusers-guidance", default=None, metavar="W,…",
                    help="classifier-free guidance weights for diffusers' rows, each one row (default: the teacher "
                         "card's weight); diffusers guides plainly, so its best weight can differ from ours")
    ap.add_argument("--unguided", action=argparse.BooleanOptionalAction, default=True,
                    help="also the teacher's unguided rows at each NFE (--no-unguided: the guided ones only)")
    ap.add_argument("--interval", action=argparse.BooleanOptionalAction, default=False,
                    help="also our samplers guided only in the teacher card's guidance interval, at the most steps "
                    "within each NFE budget")
    ap.add_argument("--guidance", type=float, default=None,
                    help="the teacher's guidance (default: its card's; the shipped student was distilled at 2)")
    ap.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                    help="with --interval, the σ range (default: the teacher card's; the shipped student was "
                    "distilled with 0.3,5)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.n % 10 or args.n_ref % 10:
        raise SystemExit("--n and --n-ref must be multiples of 10 (classes balanced)")
    torch.set_num_threads(args.threads)
    student, teacher = load_model(args.student), load_model(args.teacher)
    card = teacher.config.sample
    w = card.guidance if args.guidance is None else args.guidance
    eps = f", ε̂/{card.eps_scale:g}" if card.eps_scale != 1 else ""
    how = (f", η {card.guidance_parallel:g}" if card.guidance_parallel != 1 else "") + eps
    inception, classifier = InceptionFeatures(), load_classifier()
    real = peers.real_features(inception, (args.n_ref + args.n) // 10)
    ref = real[:, : args.n_ref // 10].reshape(-1, real.shape[-1])
    floor = fid_from_features(real[:, args.n_ref // 10:].reshape(-1, real.shape[-1]), ref)
    print(f"real-vs-real floor: {args.n} test images vs {args.n_ref} others: FD {floor:.2f}", file=sys.stderr)
    labels = torch.arange(args.n) % 10
    counters = {id(m): Counter(m.denoiser.net) for m in (student, teacher)}

    jobs: list[tuple[str, str, LoadedModel, Any]] = []
    for k in map(int, args.student_steps.split(",")):
        jobs.append(("student", f"consistency:distilled {k} steps", student,
                     lambda k=k: ours(student, "consistency", "distilled", k, 1.0, args.n, args.seed)))
    for nfe in map(int, args.teacher_nfes.split(",")):
        for spec in filter(None, args.ours.split(",")):
            sampler, grid = spec.split(":")
            jobs.append(("teacher, ours", f"{spec} guided {w:g}{how}", teacher,
                         lambda s=sampler, g=grid, k=nfe // 2: ours(teacher, s, g, k, w, args.n, args.seed)))
            interval = parse_interval(args.guidance_interval) if args.guidance_interval else card.guidance_interval
            if args.interval and interval:
                lo, hi = interval
                k = steps_within(teacher, grid, nfe, (lo, hi))
                jobs.append(("teacher, ours", f"{spec} guided {w:g}{how} in σ ∈ [{lo:g}, {hi:g}], {k} steps", teacher,
                             lambda s=sampler, g=grid, k=k, iv=(lo, hi):
                             ours(teacher, s, g, k, w, args.n, args.seed, iv)))
            if args.unguided:
                jobs.append(("teacher, ours", f"{spec} unguided{eps}", teacher,
                             lambda s=sampler, g=grid, k=nfe: ours(teacher, s, g, k, 1.0, args.n, args.seed)))
    theirs_w = [float(x) for x in args.diffusers_guidance.split(",")] if args.diffusers_guidance else [w]
    for nfe in map(int, args.diffusers_nfes.split(",")):
        for spec in filter(None, args.diffusers.split(",")):
            for wd in theirs_w:
                jobs.append(("teacher, diffusers", f"{spec} guided {wd:g}", teacher,
                             lambda s=spec, k=nfe // 2, wd=wd: theirs(teacher, s, k, wd, args.n, args.seed)))
            if args.unguided:
                jobs.append(("teacher, diffusers", f"{spec} unguided", teacher,
                             lambda s=spec, k=nfe: theirs(teacher, s, k, 1.0, args.n, args.seed)))
    rows = []
    for who, what, model, run in jobs:
        counter = counters[id(model)]
        counter.rows = 0
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                images = run()
        except Exception as err:  # noqa: BLE001 — e.g. a scheduler that breaks on this chain: reported
            rows.append({"who": who, "what": what, "error": f"{type(err).__name__}: {err}"[:200]})
            print(f"{who} {what}: failed, {rows[-1]['error']}", file=sys.stderr, flush=True)
            continue
        seconds = time.perf_counter() - t0
        nfe = counter.rows / args.n
        fd = fid_from_features(inception(images), ref)
        acc = float((predict(classifier, images) == labels).float().mean())
        rows.append({"who": who, "what": what, "nfe": nfe, "fd": fd, "accuracy": acc, "sample_s": seconds})
        print(f"{who:<20} {what:<40} NFE {nfe:5.1f}  FD {fd:6.2f}  acc {100 * acc:5.1f} %  sampling {seconds:5.1f} s",
              file=sys.stderr, flush=True)
    print(f"\n### Few-step generation (run {time.strftime('%Y-%m-%d %H:%M')}; n = {args.n} vs {args.n_ref} real, floor "
          f"FD {floor:.2f}; seeds {args.seed}–{args.seed + args.n - 1}; {platform.processor() or platform.machine()}, "
          f"{args.threads} threads)\n")
    print("| model, sampler | NFE | FD | FD / floor | class accuracy | sampling s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['who']}: {r['what']} | failed: {r['error']} | | | | |")
        else:
            print(f"| {r['who']}: {r['what']} | {r['nfe']:.1f} | {r['fd']:.2f} | {r['fd'] / floor:.2f} "
                  f"| {100 * r['accuracy']:.1f} % | {r['sample_s']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "n": args.n, "n_ref": args.n_ref,
                                         "floor_fd": floor, "student": args.student, "teacher": args.teacher,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
