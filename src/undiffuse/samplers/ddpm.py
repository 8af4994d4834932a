"""Samplers of the DDPM/DDIM family, run on any σ grid through ᾱ = 1/(1+σ²)."""

from __future__ import annotations

import math
from itertools import pairwise

from ..errors import UndiffuseError
from ..process import posterior
from .registry import register


@register("ddpm", order=None, stochastic=True)
def ddpm(model, x, sigmas, noise, callback, variance: str = "posterior"):
    """Ancestral DDPM: draw x_prev ~ p(x_prev | x_t) step by step (Ho et al. 2020, Algorithm 2).

    ``variance``: "posterior" (β̃_t, eq. 7) or "beta" (β_t); both were found to work in the paper.
    """
    if variance not in ("posterior", "beta"):
        raise UndiffuseError(f"ddpm variance must be 'posterior' or 'beta', got {variance!r}")
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        alpha_bar, alpha_bar_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        # Move to the VP chain, take the posterior step, move back to σ-form.
        mean, var = posterior(x * math.sqrt(alpha_bar), x0_hat, alpha_bar, alpha_bar_prev)
        if variance == "beta":
            var = 1 - alpha_bar / alpha_bar_prev
        x = (mean + math.sqrt(float(var)) * noise()) / math.sqrt(alpha_bar_prev)
    return x


@register("ddim", order=1, stochastic=False)
def ddim(model, x, sigmas, noise, callback, eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12): η = 0 is the deterministic ODE step, η = 1 matches DDPM's variance."""
    if eta < 0:
        raise UndiffuseError(f"ddim needs eta ≥ 0, got {eta}")
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        eps_hat = (x - x0_hat) / sigma
        alpha_bar, alpha_bar_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        std = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        z = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(1 - alpha_bar_prev - std**2, 0.0)) * eps_hat
        if std > 0:
            z = z + std * noise()
        x = z / math.sqrt(alpha_bar_prev)
    return x
