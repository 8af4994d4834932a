"""Are generated images new? Their nearest training images, and how near they are compared with test images.

A model that memorised its data puts samples at (almost) zero distance from a training image. A model
that generalises puts them about as far from the training set as unseen test images are (cf. Carlini
et al. 2023, who flag a sample as copied when it is far nearer to one training image than to the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def nearest_neighbours(queries: Tensor, reference: Tensor, k: int = 1, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Euclidean distances (n, k) and indices (n, k) of each query's k nearest reference items (pixel space)."""
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape[1:])} and reference {tuple(reference.shape[1:])} "
                         "items differ in shape")
    ref = reference.flatten(1).float()
    ref_sq = ref.pow(2).sum(1)
    dists, idx = [], []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].flatten(1).float()
        d2 = (q.pow(2).sum(1, keepdim=True) + ref_sq - 2 * q @ ref.T).clamp(min=0)
        d, i = d2.topk(k, dim=1, largest=False)
        dists.append(d.sqrt())
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


@dataclass
class Novelty:
    """Nearest-training-image distances of generated samples against those of held-out test images."""

    generated_median: float
    test_median: float
    generated_min: float
    test_min: float
    ratio: float            # median generated / median test: ≈ 1 generalises, ≪ 1 copies

    def summary(self) -> str:
        return (f"distance to the nearest training image, median (min): generated {self.generated_median:.2f} "
                f"({self.generated_min:.2f}), unseen test images {self.test_median:.2f} ({self.test_min:.2f}); "
                f"ratio {self.ratio:.2f}")


def novelty(generated: Tensor, train: Tensor, test: Tensor) -> Novelty:
    """Compare how far generated and held-out test images lie from their nearest training image."""
    g, _ = nearest_neighbours(generated, train)
    t, _ = nearest_neighbours(test, train)
    g, t = g[:, 0], t[:, 0]
    return Novelty(float(g.median()), float(t.median()), float(g.min()), float(t.min()),
                   float(g.median() / t.median()))
