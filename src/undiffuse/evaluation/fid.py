"""Fréchet distance and kernel inception distance between two sets of features (N, D).

FD = ‖μ₁ - μ₂‖² + tr(Σ₁ + Σ₂ - 2 (Σ₁^½ Σ₂ Σ₁^½)^½) (Heusel et al. 2017; Dowson & Landau 1982), computed
in float64 through symmetric eigendecompositions: no non-symmetric square root, no complex parts.
KID is the unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy/D + 1)³, averaged over
random subsets (Bińkowski et al. 2018); unlike FD it has no bias from the sample size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    f = features.double()
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N ≥ 2, D), got {tuple(features.shape)}")
    return f.mean(0), torch.cov(f.T)


def _psd_sqrt(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    s1 = _psd_sqrt(sigma1.double())
    middle = s1 @ sigma2.double() @ s1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = (mu1 - mu2).double()
    return float(diff @ diff + torch.trace(sigma1.double()) + torch.trace(sigma2.double()) - 2 * trace_sqrt)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between two feature sets (N, D) and (M, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kernel_distance(a: Tensor, b: Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0
                    ) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` random subsets of the unbiased MMD²."""
    a, b = a.double(), b.double()
    n = min(subset_size, len(a), len(b))
    if n < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = a.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:n]]
        y = b[torch.randperm(len(b), generator=g)[:n]]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = n * (n - 1)
        mmd = (kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off \
            - 2 * kxy.mean()
        values.append(float(mmd))
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0
