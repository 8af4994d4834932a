"""Two-sample distances between point clouds (n, d): zero exactly when the distributions agree."""

from __future__ import annotations

import torch
from torch import Tensor


def energy_distance(x: Tensor, y: Tensor) -> float:
    """E = 2 E‖X-Y‖ - E‖X-X'‖ - E‖Y-Y'‖ (Székely & Rizzo 2013), the V-statistic estimate."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """√(E_θ W₂²(θᵀX, θᵀY)) over random unit directions θ (Rabin et al. 2011); needs len(x) == len(y)."""
    if len(x) != len(y):
        raise ValueError(f"sliced_wasserstein needs equal sample counts, got {len(x)} and {len(y)}")
    x, y = x.double().flatten(1), y.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = (x @ theta).sort(dim=0)
    py, _ = (y @ theta).sort(dim=0)
    return float((px - py).pow(2).mean().sqrt())
