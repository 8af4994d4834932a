"""How much fresh noise the SDE samplers should draw: Inception FID of the shipped model against η and s_noise.

DPM-Solver++(2M/3M) SDE (Lu et al. 2022b, §5) add noise of scale s_noise·σ_next·sqrt(1 − e^{−2ηh}) per step;
η = 1 is the reverse SDE, η = 0 the probability-flow ODE. Intermediate η trades the SDE's error contraction against
the noise it must remove again; s_noise slightly above 1 (Karras et al. 2022, §4, S_noise) makes up for the detail
an imperfect denoiser removes. Everything else is the model card's (grid, steps, guidance and its interval)::

    .venv/bin/python bench/sde_eta.py --model fashion-mnist --samplers dpmpp_2m_sde,dpmpp_3m_sde \
        --etas 0.5,0.75,1 --s-noises 1,1.01 --n 2000 --json bench/results/sde-eta.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from undiffuse import samplers
from undiffuse.evaluation import EvalSettings, evaluate
from undiffuse.evaluation.report import table
from undiffuse.models import load_model


def with_noise(name: str, eta: float, s_noise: float = 1.0) -> str:
    """Register ``name`` with its η and s_noise fixed under a new name (both 1: the sampler itself) and return that
    name."""
    if eta == 1.0 and s_noise == 1.0:
        return name
    body = samplers.get(name).__wrapped__
    variant = name + (f"_eta{eta:g}" if eta != 1.0 else "") + (f"_snoise{s_noise:g}" if s_noise != 1.0 else "")

    def fixed(model, x, sigmas, noise, callback):
        return body(model, x, sigmas, noise, callback, eta=eta, s_noise=s_noise)
    fixed.__doc__ = f"{name} with η = {eta:g}, s_noise = {s_noise:g}."
    samplers.register(variant, order=None, stochastic=eta > 0)(fixed)
    return variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--samplers", default="dpmpp_2m_sde,dpmpp_3m_sde")
    ap.add_argument("--etas", default="0.5,0.75,1")
    ap.add_argument("--s-noises", default="1", help="comma-separated scales of the fresh noise (1: as drawn)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps-scale", type=float, default=None, help="ε scaling (default: the card's; 1: off)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [with_noise(s, float(e), float(k)) for s in args.samplers.split(",") for e in args.etas.split(",")
             for k in args.s_noises.split(",")]
    model = load_model(args.model)
    ev = evaluate(model, EvalSettings(samplers=names, steps=[args.steps], n=args.n, seed=args.seed,
                                      eps_scale=args.eps_scale))
    print(table(ev))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(ev.to_dict(), indent=1))


if __name__ == "__main__":
    main()
