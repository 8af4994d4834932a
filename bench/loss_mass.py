"""Where a recipe's training loss goes: the share of λ(σ)·‖D(x0 + σε, σ) − x0‖² per σ band, per min-SNR γ.

The denoiser's own errors on real held-out images, at σ drawn as training draws them (t uniform on the discrete
chain), weighed by min-SNR-γ (λ = min(SNR, γ) on the x0 error, Hang et al. 2023) for each γ asked, and natively
(γ = inf: the v-loss, λ = 1 + SNR). A band's share of the summed loss is how much of each gradient step it gets:
what a larger γ moves towards low σ, and what it takes from the middle.

    .venv/bin/python bench/loss_mass.py                     # the shipped teacher, γ = 5, 20, 100, inf; ~1 min
    .venv/bin/python bench/loss_mass.py --model ~/runs/x --gammas 5,20 --json bench/results/loss-mass-x.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from undiffuse.evaluation.reference import reference_set
from undiffuse.losses import min_snr_weight, native_weight
from undiffuse.models import build_schedule, load_model, training_sigmas
from undiffuse.process import add_noise

BANDS = (0.0, 0.05, 0.1, 0.2, 0.45, 1.0, 2.0, 5.0, float("inf"))


@torch.no_grad()
def training_errors(model, images: torch.Tensor, labels: torch.Tensor, draws: int, seed: int, batch: int = 250):
    """(σ, x0 error per image) for ``draws`` training-density σ per image, the true class as the condition."""
    gen = torch.Generator().manual_seed(seed)
    schedule = build_schedule(model.config)
    sigmas, errors = [], []
    for _ in range(draws):
        for i in range(0, len(images), batch):
            x0, y = images[i:i + batch], labels[i:i + batch]
            s = training_sigmas(model.config, schedule, len(x0), gen).float()
            x = add_noise(x0, s, torch.randn(x0.shape, generator=gen))
            errors.append((model.denoiser(x, s, y) - x0).pow(2).flatten(1).mean(1))
            sigmas.append(s)
    return torch.cat(sigmas), torch.cat(errors)


def band_shares(sigma: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    """Each σ band's share of ``values``' sum, in %."""
    total = values.sum()
    return {f"[{lo:g}, {hi:g})": round(float(values[(sigma >= lo) & (sigma < hi)].sum() / total) * 100, 1)
            for lo, hi in zip(BANDS[:-1], BANDS[1:], strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--n", type=int, default=2000, help="held-out images")
    ap.add_argument("--draws", type=int, default=4, help="σ draws per image")
    ap.add_argument("--gammas", default="5,20,100,inf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = load_model(args.model)
    ref = reference_set(model.config, args.n, seed=args.seed)
    sigma, error = training_errors(model, ref.a, ref.labels_a, args.draws, args.seed)
    out = {"model": str(args.model), "n": args.n, "draws": args.draws,
           "training_density": band_shares(sigma, torch.ones_like(sigma)), "loss_share": {}}
    for g in (float(v) for v in args.gammas.split(",")):
        weight = native_weight(model.denoiser, sigma) if g == float("inf") else min_snr_weight(sigma, g)
        out["loss_share"][f"{g:g}"] = band_shares(sigma, weight * error)
    bands = list(out["training_density"])
    print("| γ | " + " | ".join(f"σ ∈ {b}" for b in bands) + " |")
    print("|---" * (len(bands) + 1) + "|")
    print("| training density | " + " | ".join(f"{v} %" for v in out["training_density"].values()) + " |")
    for g, shares in out["loss_share"].items():
        print(f"| {g} | " + " | ".join(f"{v} %" for v in shares.values()) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
