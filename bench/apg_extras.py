"""Adaptive projected guidance's other two parts on the shipped teacher: momentum and the norm threshold.

APG (Sadat et al. 2024, arXiv 2410.02416, Algorithm 1) does three things to the guidance update Δ = D_pos − D_neg:
a running average with negative momentum β (Δ ← Δ + β Δ_prev, §3.3), a cap on its norm r (Δ ← Δ·min(1, r/‖Δ‖),
§3.2), and the projection that `--guidance-parallel` already is (§3.1). This measures the first two on top of the
card's projection, by wrapping :class:`undiffuse.guidance.GuidedDenoiser` for the run (a new trajectory, seen as σ
rising again or a new batch size, starts the average afresh). Everything else is the model card's::

    .venv/bin/python bench/apg_extras.py --momentum -0.5 --guidance 4 --json bench/results/teacher-apg-momentum-0.5.json
    .venv/bin/python bench/apg_extras.py --norm-threshold 1 --guidance 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from undiffuse import guidance
from undiffuse.evaluation import EvalSettings, evaluate
from undiffuse.evaluation.report import table
from undiffuse.models import load_model


def patch(momentum: float, threshold: float) -> None:
    """Make every GuidedDenoiser average its update with ``momentum`` and cap its norm at ``threshold`` (0: off)."""
    cls = guidance.GuidedDenoiser
    forward = cls.forward

    def tracked_forward(self, x, sigma, cond=None):
        s = float(sigma.max())
        running = getattr(self, "_running", None)
        if running is None or s > self._last_sigma or running.shape[0] != len(x):
            self._running = None            # a new trajectory (or batch): the average starts afresh
        self._last_sigma = s
        return forward(self, x, sigma, cond)

    def mix(self, pos, neg):
        update = pos - neg
        if momentum:
            if self._running is not None:
                update = update + momentum * self._running
            self._running = update
        if threshold:
            norm = update.flatten(1).norm(dim=1).view(-1, *([1] * (update.ndim - 1)))
            update = update * (threshold / norm.clamp_min(1e-12)).clamp(max=1.0)
        return pos + (self.scale - 1) * guidance.project_guidance(update, pos, self.parallel)

    cls.forward, cls.mix = tracked_forward, mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--momentum", type=float, default=0.0, help="β (APG: negative, e.g. -0.5; 0: off)")
    ap.add_argument("--norm-threshold", type=float, default=0.0, help="r, on the update's L2 norm per sample (0: off)")
    ap.add_argument("--guidance", type=float, default=None, help="default: the card's")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    patch(args.momentum, args.norm_threshold)
    model = load_model(args.model)
    ev = evaluate(model, EvalSettings(samplers=[model.config.sample.sampler], steps=[model.config.sample.steps],
                                      n=args.n, seed=args.seed, guidance=args.guidance), progress=False)
    print(f"APG momentum {args.momentum:g}, norm threshold {args.norm_threshold:g}")
    print(table(ev))
    if args.json:
        out = ev.to_dict()
        out["apg"] = {"momentum": args.momentum, "norm_threshold": args.norm_threshold}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
