"""Linear multistep sampler on the PF-ODE in σ (Adams–Bashforth with non-uniform steps)."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np

from ..errors import UndiffuseError
from .registry import H_MAX, register, step_order


def lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """∫_a^b ℓ_j(τ) dτ for the Lagrange basis polynomial ℓ_j over ``nodes`` (exact)."""
    others = [t for k, t in enumerate(nodes) if k != j]
    basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
    basis = basis / math.prod(nodes[j] - t for t in others)
    antiderivative = basis.integ()
    return float(antiderivative(b) - antiderivative(a))


@register("lms", order=4, stochastic=False)
def lms(model, x, sigmas, noise, callback, order: int = 4, h_max: float = H_MAX):
    """Linear multistep of order ≤ 4: integrate the polynomial through the last dx/dσ's (as in PNDM/k-diffusion).

    Steps longer than ``h_max`` in λ = −ln σ, and the last step to σ = 0 (onto x̂0), are Euler steps
    (:data:`~undiffuse.samplers.registry.H_MAX`).
    """
    if order < 1:
        raise UndiffuseError(f"lms needs order ≥ 1, got {order}")
    derivatives = []  # dx/dσ at the last few grid points, oldest first
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        derivatives = (derivatives + [(x - x0_hat) / sigma])[-order:]
        k = step_order(sigma, sigma_next, len(derivatives), h_max)  # use the last k of them
        nodes = sigmas[i + 1 - k: i + 1]
        x = x + sum(lagrange_integral(nodes, j, sigma, sigma_next) * d for j, d in enumerate(derivatives[-k:]))
    return x
