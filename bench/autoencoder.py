"""How well does a trained autoencoder code images it saw, and images it never saw? PSNR of encode → decode.

    .venv/bin/python bench/autoencoder.py ~/runs/emoji-autoencoder --json bench/results/autoencoder-emoji.json

- seen: the first --n images of its training set (its config's data);
- unseen: Tux Paint's captioned stamps (real clip-art, none of them in the training set), at the same size;
- a baseline: the same images through a bilinear 4× down- and up-sampling (what a latent of this size holds
  without learning), and the encoder's latent statistics after scaling (mean, std: ~0 and ~1 by construction).
Writes a figure of originals above reconstructions for both sets (--figure).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from undiffuse.data.training import load_training_data
from undiffuse.data.tuxpaint import load_tuxpaint
from undiffuse.images import make_grid, save_png
from undiffuse.nets.autoencoder import psnr
from undiffuse.spaces import load_autoencoder


def score(space, x: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    z = space.encode(x)
    recon = space.decode(z)
    seconds = time.perf_counter() - t0
    f = space.factor
    blur = F.interpolate(F.interpolate(x, scale_factor=1 / f, mode="bilinear", antialias=True), scale_factor=f,
                         mode="bilinear")
    return {"n": len(x), "psnr_db": float(psnr(recon, x).mean()), "psnr_bilinear_db": float(psnr(blur, x).mean()),
            "latent_mean": float(z.mean()), "latent_std": float(z.std()), "seconds_per_image": seconds / len(x),
            "recon": recon}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("autoencoder")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    space = load_autoencoder(args.autoencoder)
    cfg = space.config
    data = load_training_data(cfg)
    seen = data.batch(torch.arange(min(args.n, len(data))), torch.Generator())[0]
    stamps = load_tuxpaint(size=cfg.data.image_size, channels=cfg.data.channels)
    unseen = stamps.images[: args.n].float() / 127.5 - 1
    res = {"autoencoder": args.autoencoder, "latent_shape": list(space.shape), "scale": space.scale,
           "seen": score(space, seen), "unseen (Tux Paint stamps)": score(space, unseen)}
    for name in ("seen", "unseen (Tux Paint stamps)"):
        r = res[name]
        print(f"{name}: {r['n']} images, PSNR {r['psnr_db']:.2f} dB (bilinear ×{space.factor} down-up "
              f"{r['psnr_bilinear_db']:.2f} dB); latents mean {r['latent_mean']:+.3f} std {r['latent_std']:.3f}; "
              f"{1000 * r['seconds_per_image']:.1f} ms per image encode + decode")
    if args.figure:
        rows = [seen[:12], res["seen"]["recon"][:12], unseen[:12], res["unseen (Tux Paint stamps)"]["recon"][:12]]
        save_png(args.figure, make_grid(torch.cat(rows), nrow=12), {"autoencoder": args.autoencoder, "rows":
                 "training images; reconstructions; unseen Tux Paint stamps; reconstructions"}, scale=2)
    for r in res.values():
        if isinstance(r, dict):
            r.pop("recon", None)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **res}, indent=2))


if __name__ == "__main__":
    main()
