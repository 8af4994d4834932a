"""Which way does a model's footwear face? Fashion-MNIST's sneakers and ankle boots all face one way in the test
set; a model trained on horizontal flips draws about half of them mirrored.

Per image, "facing the usual way" means the horizontal centre of mass of the top half lies right of the bottom
half's (a boot's shaft, a sneaker's heel collar, a sandal's strap). Printed per footwear class: the share among the
test images and among --n images each model draws with its card's settings (classes in turn, seed 0). With
--inception, also how much Inception (the FID network) notices: the FID of the second real set to the first with a
random half, or all, of it mirrored (the real features are cached, the mirrored ones cost ~5 min on 2 cores).

    .venv/bin/python bench/footwear_orientation.py --models fashion-mnist,~/runs/teacher-ft --inception
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from undiffuse.evaluation.evaluate import EvalSettings, feature_network, real_features, score
from undiffuse.evaluation.reference import reference_set
from undiffuse.models import load_model
from undiffuse.sampling import card_request, generate

FOOTWEAR = ("Sandal", "Sneaker", "Ankle boot")


def faces_usual_way(images: Tensor) -> Tensor:
    """(N,) bool: the top half's horizontal centre of mass is right of the bottom half's (images in [-1, 1])."""
    ink = (images[:, 0] + 1) / 2
    cols = torch.arange(ink.shape[-1], dtype=ink.dtype)
    half = ink.shape[-2] // 2

    def centre(part: Tensor) -> Tensor:
        return (part.sum(1) * cols).sum(1) / part.sum((1, 2)).clamp_min(1e-6)
    return centre(ink[:, :half]) > centre(ink[:, half:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fashion-mnist", help="comma-separated: shipped names or run folders")
    ap.add_argument("--n", type=int, default=600, help="images drawn per model (classes in turn)")
    ap.add_argument("--n-ref", type=int, default=2000, help="test images per real set")
    ap.add_argument("--inception", action="store_true", help="also the FID of half- and all-mirrored real sets")
    args = ap.parse_args()

    models = [load_model(m) for m in args.models.split(",")]
    ref = reference_set(models[0].config, args.n_ref, seed=0)
    names = models[0].class_names
    drawn = []
    for m in models:
        req = card_request(m, n=args.n, seed=0, batch_size=200)
        drawn.append(generate(m, req, progress=False))
    print(f"{'class':12s} {'test set':>9s} " + " ".join(f"{m.source:>24.24s}" for m in models))
    for name in FOOTWEAR:
        c = names.index(name)
        row = [faces_usual_way(ref.a[ref.labels_a == c]).float().mean().item()]
        row += [faces_usual_way(images[labels == c]).float().mean().item() for images, labels in drawn]
        print(f"{name:12s} {row[0]:9.0%} " + " ".join(f"{v:24.0%}" for v in row[1:]))

    if args.inception:
        settings = EvalSettings(n=args.n_ref, features="inception")
        extract = feature_network(settings)
        real_a, real_b = real_features(ref, settings, extract)
        mirrored = extract(ref.b.flip(-1))
        coin = torch.rand(len(real_b), generator=torch.Generator().manual_seed(0)) < 0.5
        print(f"Inception FID, real vs real: {score(real_a, real_b).fid:.2f}; a random half of the second set "
              f"mirrored: {score(real_a, torch.where(coin[:, None], mirrored, real_b)).fid:.2f}; all of it "
              f"mirrored: {score(real_a, mirrored).fid:.2f}")


if __name__ == "__main__":
    main()
