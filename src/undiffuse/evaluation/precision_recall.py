"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019, sec. 3).

Each set's manifold is approximated by balls around its feature vectors, the radius of a ball being
the distance to the point's k-th nearest neighbour in the same set. Precision is the fraction of
generated samples inside the real manifold (fidelity); recall is the fraction of real samples
inside the generated manifold (coverage). Unlike FID, the two failure modes are reported apart.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _min_over_chunks(a: Tensor, b: Tensor, fn, chunk: int) -> Tensor:
    """fn(distance block (i, M)) reduced per row of a, computed in row chunks to bound memory."""
    return torch.cat([fn(torch.cdist(a[i:i + chunk], b)) for i in range(0, len(a), chunk)])


def knn_radii(features: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """(N,) distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {len(features)}")
    f = features.double()
    # the k+1-th smallest distance: the smallest is the point itself (0)
    return _min_over_chunks(f, f, lambda d: d.kthvalue(k + 1, dim=1).values, chunk)


def coverage_of(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    """Fraction of ``points`` inside at least one ball (centre, radius)."""
    inside = _min_over_chunks(points.double(), centres.double(), lambda d: (d <= radii[None]).any(dim=1), chunk)
    return float(inside.double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of feature sets real (N, D) and fake (M, D) with k-NN manifolds (k = 3 in the paper)."""
    precision = coverage_of(fake, real, knn_radii(real, k))
    recall = coverage_of(real, fake, knn_radii(fake, k))
    return precision, recall
