"""Exact denoisers for data whose noised density is known in closed form.

They drive the samplers with no network at all: the analytic tests, the explain page and the
2-D demos use them to show what an ideal model would do.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser, _b


class GaussianDenoiser(Denoiser):
    """Data x_0 ~ N(μ, diag(s²)): D(x, σ) = μ + s²/(s²+σ²) (x - μ)."""

    def __init__(self, mean: Tensor | float, std: Tensor | float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64))

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s2 = _b(sigma, x).double() ** 2
        m, v = self.mean, self.std**2
        return (m + v / (v + s2) * (x.double() - m)).to(x.dtype)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Fresh data x_0 (float64)."""
        return self.mean + self.std * torch.randn(shape, generator=generator, dtype=torch.float64)

    def log_density(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x) = Σ_i log N(x_i; μ_i, s_i²+σ²), the exact noised density; x (B, ...) → (B,) float64."""
        var = self.std**2 + _b(torch.as_tensor(sigma, dtype=torch.float64), x.double()) ** 2
        z = (x.double() - self.mean) ** 2 / var
        return (-0.5 * (z + (2 * math.pi * var).log())).flatten(1).sum(1)

    def ode_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE map: (x - μ)/√(s²+σ²) is constant along a trajectory."""
        v = self.std**2
        ratio = ((v + sigma_to**2) / (v + sigma_from**2)).sqrt()
        return (self.mean + ratio * (x.double() - self.mean)).to(x.dtype)


class GaussianMixtureDenoiser(Denoiser):
    """Data from Σ_k w_k N(μ_k, s_k² I) in d dimensions; the exact posterior mean.

    p_σ(x) = Σ_k w_k N(x; μ_k, (s_k²+σ²) I), and E[x_0 | x] = Σ_k r_k(x) (μ_k + s_k²/(s_k²+σ²)(x-μ_k))
    with responsibilities r_k ∝ w_k N(x; μ_k, (s_k²+σ²) I). Samples have shape (batch, d).
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        k = len(means)
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64) / float(torch.as_tensor(weights).sum())
        self.register_buffer("means", means)      # (K, d)
        self.register_buffer("stds", stds)        # (K,)
        self.register_buffer("weights", weights)  # (K,)

    def responsibilities(self, x: Tensor, sigma: Tensor) -> Tensor:
        """r_k(x) = p(component k | x at noise level σ), shape (batch, K)."""
        d = self.means.shape[1]
        var = self.stds**2 + _b(sigma, x).double().reshape(-1, 1) ** 2        # (B, K)
        sq = ((x.double()[:, None, :] - self.means[None]) ** 2).sum(-1)        # (B, K)
        logp = self.weights.log() - 0.5 * sq / var - 0.5 * d * (2 * math.pi * var).log()
        return torch.softmax(logp, dim=1)

    def log_density(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x) = log Σ_k w_k N(x; μ_k, (s_k²+σ²) I), exact at every σ; x (B, d) → (B,) float64."""
        d = self.means.shape[1]
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)  # (B or 1, 1)
        var = self.stds**2 + sigma**2                                                    # (B or 1, K)
        sq = ((x.double()[:, None, :] - self.means[None]) ** 2).sum(-1)                  # (B, K)
        logp = self.weights.log() - 0.5 * sq / var - 0.5 * d * (2 * math.pi * var).log()
        return torch.logsumexp(logp, dim=1)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s2 = _b(sigma, x).double().reshape(-1, 1, 1) ** 2
        v = (self.stds**2)[None, :, None]
        comp = self.means[None] + v / (v + s2) * (x.double()[:, None, :] - self.means[None])  # (B, K, d)
        r = self.responsibilities(x, sigma)
        return (r[..., None] * comp).sum(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n fresh points and their component labels."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps, k
