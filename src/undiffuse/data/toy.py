"""2-D toy distributions, each centred and scaled to about unit standard deviation.

Each generator takes n and a NumPy ``Generator`` so that a data set depends only on its seed.
The shapes follow the ones common in the diffusion and flow literature (FFJORD, Grathwohl et al.
2019; scikit-learn's moons and swiss roll).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import UndiffuseError


def two_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles of radius 1 with N(0, 0.05²) noise."""
    t = rng.uniform(0, np.pi, n)
    upper = rng.integers(0, 2, n).astype(bool)
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    p = np.stack([x, y], 1) + 0.05 * rng.standard_normal((n, 2))
    return (p - [0.5, 0.25]) / 0.71  # measured mean and RMS std


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """The 2-D swiss roll: (t cos t, t sin t) for t ~ U(1.5π, 4.5π), with N(0, 0.3²) noise."""
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))
    p = np.stack([t * np.cos(t), t * np.sin(t)], 1) + 0.3 * rng.standard_normal((n, 2))
    return (p - [2.0, 0.2]) / 6.8


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight N(μ_k, 0.1²I) with μ_k evenly on a circle of radius √2, equally weighted."""
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    centres = np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centres + 0.1 * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4×4 board over [-2, 2]² (FFJORD's checkerboard)."""
    x = rng.uniform(-2, 2, n)
    y = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x) % 2
    return np.stack([x, y], 1) / 1.15  # U(-2, 2) has std 4/√12 ≈ 1.15


TOY_SETS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "two_moons": two_moons, "swiss_roll": swiss_roll, "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def toy_dataset(name: str, n: int, seed: int = 0) -> Tensor:
    """n points of the named toy distribution as a float32 tensor of shape (n, 2)."""
    if name not in TOY_SETS:
        raise UndiffuseError(f"unknown toy data set {name!r}; known: {', '.join(TOY_SETS)}")
    if not isinstance(n, int) or n < 1:
        raise UndiffuseError(f"the number of points must be a positive integer, got {n!r}")
    points = TOY_SETS[name](n, np.random.default_rng(seed))
    return torch.from_numpy(points).float()
