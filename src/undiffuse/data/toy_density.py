"""The true log-density of each 2-D toy set (data/toy.py), to score a model's likelihood against.

Eight Gaussians is an exact mixture and the checkerboard is piecewise uniform. Two moons and the
swiss roll are curves blurred by Gaussian noise: their density ∫ N(x; c(t), s²I) p(t) dt is a
1-D integral, taken by the midpoint rule on a grid in t far finer than the noise (the spacing along
the curve is < 1/4 of s), which makes it a mixture of many Gaussians. Each set was centred and
scaled after sampling (y = (x - shift) / scale), hence the log-Jacobian 2 log scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UndiffuseError


def _curve_mixture(y: Tensor, centres: Tensor, std: float, shift: tuple[float, float], scale: float) -> Tensor:
    """log of the equal-weight mixture of N(centre_k, std²I) at x = y·scale + shift, in y's coordinates."""
    x = y.double() * scale + torch.tensor(shift, dtype=torch.float64)
    rows = max(1, 2**24 // len(centres))                                        # ≤ 128 MB of distances at a time
    log_k = torch.cat([torch.logsumexp(-torch.cdist(x[i:i + rows], centres.double()) ** 2 / (2 * std**2), dim=1)
                       for i in range(0, len(x), rows)]) - math.log(len(centres))
    return log_k - math.log(2 * math.pi * std**2) + 2 * math.log(scale)


def _midpoints(lo: float, hi: float, k: int) -> Tensor:
    return lo + (torch.arange(k, dtype=torch.float64) + 0.5) * (hi - lo) / k


def two_moons_log_density(y: Tensor, k: int = 4096) -> Tensor:
    t = _midpoints(0, math.pi, k)
    upper = torch.stack([t.cos(), t.sin()], 1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    return _curve_mixture(y, torch.cat([upper, lower]), 0.05, (0.5, 0.25), 0.71)


def swiss_roll_log_density(y: Tensor, k: int = 16384) -> Tensor:
    t = _midpoints(1.5 * math.pi, 4.5 * math.pi, k)
    return _curve_mixture(y, torch.stack([t * t.cos(), t * t.sin()], 1), 0.3, (2.0, 0.2), 6.8)


def eight_gaussians_log_density(y: Tensor) -> Tensor:
    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return _curve_mixture(y, math.sqrt(2) * torch.stack([angle.cos(), angle.sin()], 1), 0.1, (0.0, 0.0), 1.0)


def checkerboard_log_density(y: Tensor) -> Tensor:
    """Uniform on the 8 dark unit squares of [-2, 2]² (area 8), -inf on the light ones and outside."""
    x = y.double() * 1.15
    a, b = x[:, 0], x[:, 1]
    row = torch.floor(b) - torch.floor(a) % 2                   # 0 or -2 on a dark square
    dark = (a.abs() <= 2) & (b.abs() <= 2) & ((row == 0) | (row == -2))
    inside = torch.full_like(a, -math.log(8) + 2 * math.log(1.15))
    return torch.where(dark, inside, torch.full_like(a, -math.inf))


TOY_LOG_DENSITIES = {"two_moons": two_moons_log_density, "swiss_roll": swiss_roll_log_density,
                     "eight_gaussians": eight_gaussians_log_density, "checkerboard": checkerboard_log_density}


def toy_log_density(name: str, points: Tensor) -> Tensor:
    """log p(points) (N,) under the named toy distribution, in float64 nats."""
    if name not in TOY_LOG_DENSITIES:
        raise UndiffuseError(f"unknown toy data set {name!r}; known: {', '.join(TOY_LOG_DENSITIES)}")
    return TOY_LOG_DENSITIES[name](points)
