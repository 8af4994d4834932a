"""How far a Fashion-MNIST model's background is from black, and what that costs in Inception FID.

Half the pixels of Fashion-MNIST (and every pixel of the 2-pixel frame the 28×28 images are padded with to 32×32)
are exactly black, 0 of 255. A diffusion model's x̂0 there is -1 plus the network's error; rounding to 8 bits
clamps the negative half to 0 and keeps the positive half as faint grey levels 1–4. This prints:

- the frame's error in 8-bit levels (mean, std: it should be ~0 ± 0) and how many frame pixels are not black;
- the share of exactly-black pixels inside the frame, generated against real (test images);
- the denoiser's own error on the black pixels of real test images, x̂0 = D(x0 + σε, σ) against x0 = -1, per σ
  (std in levels, conditional on the true class): what the last steps of sampling leave behind;
- Inception FID of the samples as drawn, and — a diagnostic, not a sampling option — with every level ≤ ``--snap``
  set to 0: the part of the FID that the faint background costs.

    .venv/bin/python bench/background.py --n 2000            # the shipped model as its card samples, ~8 min
    .venv/bin/python bench/background.py --model ~/runs/ft --n 2000 --json bench/results/background-ft.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from undiffuse.evaluation.evaluate import EvalSettings, feature_network, for_model, real_features, score
from undiffuse.evaluation.reference import reference_set
from undiffuse.models import load_model
from undiffuse.sampling import card_request, generate

FRAME = 2   # 28×28 padded to 32×32: a 2-pixel black frame
SIGMAS = (0.02, 0.05, 0.09, 0.17, 0.34, 1.0)   # the last σ of the card's trailing grid is 0.09


def levels(images: Tensor) -> Tensor:
    """Images in [-1, 1] → 8-bit levels as floats, unrounded and unclamped (the error itself)."""
    return (images.float() + 1) * 127.5


def frame_mask(size: int) -> Tensor:
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[FRAME:size - FRAME, FRAME:size - FRAME] = False
    return mask


def background_stats(images: Tensor) -> dict[str, float]:
    """The frame's error in levels (mean, std, share not black after rounding) and the share of black pixels
    inside it."""
    v = levels(images)[:, 0]
    mask = frame_mask(v.shape[-1])
    q = v.clamp(0, 255).round()
    frame = v[:, mask]
    return {"frame_mean_levels": float(frame.mean()), "frame_std_levels": float(frame.std()),
            "frame_not_black": float((q[:, mask] > 0).float().mean()),
            "inner_black": float((q[:, ~mask] == 0).float().mean())}


@torch.no_grad()
def black_error(model, images: Tensor, labels: Tensor, sigmas: tuple[float, ...], seed: int = 0) -> dict[str, float]:
    """Per σ: the std, in 8-bit levels, of D(x0 + σε, σ, class) − x0 over the pixels where x0 is black."""
    gen = torch.Generator().manual_seed(seed)
    black = images == -1
    out = {}
    for sigma in sigmas:
        noise = torch.randn(images.shape, generator=gen)
        s = torch.full((len(images),), sigma)
        x0_hat = model.denoiser(images + sigma * noise, s, labels)
        out[f"{sigma:g}"] = float(((x0_hat - images) * 127.5)[black].std())
    return out


def snapped(images: Tensor, snap: int) -> Tensor:
    """Every pixel whose 8-bit level is ≤ ``snap`` set to black (the diagnostic)."""
    q = levels(images).clamp(0, 255).round()
    return torch.where(q <= snap, torch.zeros_like(q), q) / 127.5 - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snap", type=int, default=3, help="levels ≤ this set to black for the diagnostic FID")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = load_model(args.model)
    settings = for_model(model, EvalSettings(n=args.n, seed=args.seed))
    ref = reference_set(model.config, args.n, seed=args.seed)
    extract = feature_network(settings, progress=False)
    real_a, _ = real_features(ref, settings, extract)
    images, _ = generate(model, card_request(model, n=args.n, seed=args.seed), progress=True)
    out = {"model": str(args.model), "n": args.n, "seed": args.seed, "snap": args.snap,
           "generated": background_stats(images), "real": background_stats(ref.a),
           "denoiser_error_on_black_levels": black_error(model, ref.a[:500], ref.labels_a[:500], SIGMAS),
           "fid": score(real_a, extract(images)).fid,
           "fid_snapped": score(real_a, extract(snapped(images, args.snap))).fid}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
