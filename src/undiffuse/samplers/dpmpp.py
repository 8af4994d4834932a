"""DPM-Solver++ multistep samplers in the data-prediction form (Lu et al. 2022b).

With λ = -log σ and h = λ_next - λ, the exact solution of the PF-ODE is
x_next = (σ_next/σ) x + σ_next ∫ e^λ D dλ; the solvers expand D in λ using earlier x̂_0's. A step longer than
``h_max`` in λ (for the SDE solvers (1 + η)·h) is first order (:data:`~undiffuse.samplers.registry.H_MAX`), as is
the last step, which lands on x̂_0.
"""

from __future__ import annotations

import math
from itertools import pairwise

from ..errors import UndiffuseError
from .registry import H_MAX, register, step_order


@register("dpmpp_2m", order=2, stochastic=False)
def dpmpp_2m(model, x, sigmas, noise, callback, h_max: float = H_MAX):
    """DPM-Solver++(2M), midpoint form (Lu et al. 2022b, Algorithm 2); first order at the ends."""
    x0_prev, h_prev = None, None
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = math.log(sigma / sigma_next)
        d = x0_hat
        if x0_prev is not None and step_order(sigma, sigma_next, 2, h_max) == 2:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_prev
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        x0_prev, h_prev = x0_hat, h
    return x


@register("dpmpp_2m_sde", order=None, stochastic=True)
def dpmpp_2m_sde(model, x, sigmas, noise, callback, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint", h_max: float = H_MAX):
    """DPM-Solver++(2M) for the reverse SDE (Lu et al. 2022b, §5); η = 0 gives the ODE solver."""
    if solver_type not in ("midpoint", "heun"):
        raise UndiffuseError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    x0_prev, h_prev = None, None
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = math.log(sigma / sigma_next)
        eta_h = eta * h
        phi = -math.expm1(-h - eta_h)
        x = (sigma_next / sigma) * math.exp(-eta_h) * x + phi * x0_hat
        if x0_prev is not None and step_order(sigma, sigma_next, 2, h_max, eta) == 2:
            r = h_prev / h
            if solver_type == "heun":
                x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (x0_hat - x0_prev)
            else:
                x = x + 0.5 * phi * (1 / r) * (x0_hat - x0_prev)
        if eta > 0:
            x = x + noise() * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
        x0_prev, h_prev = x0_hat, h
    return x


@register("dpmpp_3m_sde", order=None, stochastic=True)
def dpmpp_3m_sde(model, x, sigmas, noise, callback, eta: float = 1.0, s_noise: float = 1.0,
                 h_max: float = H_MAX):
    """DPM-Solver++(3M) for the reverse SDE; η = 0 gives the 3rd-order multistep ODE solver."""
    x0_1 = x0_2 = h_1 = h_2 = None  # the last two x̂_0's and step sizes
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * x0_hat
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        order = step_order(sigma, sigma_next, 3, h_max, eta)
        if x0_2 is not None and order == 3:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (x0_hat - x0_1) / r0
            d1_1 = (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif x0_1 is not None and order >= 2:
            x = x + phi_2 * (x0_hat - x0_1) / (h_1 / h)
        if eta > 0:
            x = x + noise() * sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        x0_1, x0_2, h_1, h_2 = x0_hat, x0_1, h, h_1
    return x
