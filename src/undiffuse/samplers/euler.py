"""Runge–Kutta samplers on the probability-flow ODE dx/dσ = (x - D(x, σ))/σ (Karras et al. 2022, eq. 4)."""

from __future__ import annotations

import math
from itertools import pairwise

from .registry import H_MAX_RK, register, step_order


@register("euler", order=1, stochastic=False)
def euler(model, x, sigmas, noise, callback):
    """Euler's method on the PF-ODE (Karras et al. 2022, Algorithm 1 without the Heun correction)."""
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        x = x + (x - x0_hat) / sigma * (sigma_next - sigma)
    return x


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """σ_down, σ_up: a deterministic step to σ_down then fresh noise σ_up, with σ_down² + σ_up² = σ_next²."""
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@register("euler_ancestral", order=None, stochastic=True)
def euler_ancestral(model, x, sigmas, noise, callback, eta: float = 1.0, s_noise: float = 1.0):
    """Euler step to σ_down, then add noise σ_up: ancestral sampling on any σ grid."""
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        x = x + (x - x0_hat) / sigma * (sigma_down - sigma)
        if sigma_up > 0:
            x = x + noise() * s_noise * sigma_up
    return x


@register("heun", order=2, stochastic=False)
def heun(model, x, sigmas, noise, callback, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf, s_noise: float = 1.0, h_max: float = H_MAX_RK):
    """Heun's 2nd-order method with optional churn (Karras et al. 2022, Algorithm 2).

    Steps longer than ``h_max`` in λ = −ln σ, and the last step to σ = 0, are Euler steps
    (:data:`~undiffuse.samplers.registry.H_MAX_RK`).
    """
    n = len(sigmas) - 1
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        # Churn: raise the noise level to σ̂ = σ(1+γ) by adding fresh noise.
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + noise() * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        x0_hat = model(x, sigma_hat)
        callback(i, sigma_hat, x, x0_hat)
        d = (x - x0_hat) / sigma_hat
        x_next = x + d * (sigma_next - sigma_hat)
        if step_order(sigma_hat, sigma_next, 2, h_max) == 2:  # the 2nd-order correction
            d_next = (x_next - model(x_next, sigma_next)) / sigma_next
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma_hat)
        x = x_next
    return x


@register("dpm_2", order=2, stochastic=False)
def dpm_2(model, x, sigmas, noise, callback, h_max: float = H_MAX_RK):
    """DPM-Solver-2 as a midpoint method in log σ (Lu et al. 2022; Karras et al. 2022, Algorithm 2 variant).

    Steps longer than ``h_max`` in λ = −ln σ, and the last step to σ = 0, are Euler steps
    (:data:`~undiffuse.samplers.registry.H_MAX_RK`).
    """
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        d = (x - x0_hat) / sigma
        if step_order(sigma, sigma_next, 2, h_max) == 1:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = math.sqrt(sigma * sigma_next)  # the midpoint in log σ
        x_mid = x + d * (sigma_mid - sigma)
        d_mid = (x_mid - model(x_mid, sigma_mid)) / sigma_mid
        x = x + d_mid * (sigma_next - sigma)
    return x
