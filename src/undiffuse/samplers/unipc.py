"""UniPC: a unified predictor–corrector for the PF-ODE (Zhao et al. 2023), data-prediction form.

Each step predicts x_next with UniP-p from the last p x̂_0's; once D(x_next) is evaluated the
UniC corrector recomputes x_next with it, raising the order by one at no extra evaluation.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
from torch import Tensor

from ..errors import UndiffuseError
from .registry import H_MAX, register, step_order


def _phi_rhs(hh: float, b_h: float, order: int) -> np.ndarray:
    """b_k = k! h φ_{k+1}(hh) / B(h) for k = 1 … order (Zhao et al. 2023, Algorithm 2's right-hand side)."""
    h_phi_k, fact, rhs = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, order + 1):
        rhs.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return np.array(rhs)


def uni_step(x: Tensor, sigma_hist: list[float], x0_hist: list[Tensor], sigma_next: float, order: int,
             variant: str, x0_next: Tensor | None = None) -> Tensor:
    """One UniP step from (sigma_hist[-1], x) to sigma_next, or the UniC step if ``x0_next`` is given."""
    sigma, m0 = sigma_hist[-1], x0_hist[-1]
    if sigma_next == 0:
        return m0  # the last step is first order and lands on x̂_0
    h = math.log(sigma / sigma_next)  # λ_next - λ with λ = -log σ
    hh = -h
    b_h = math.expm1(hh) if variant == "bh2" else hh
    rks, diffs = [], []
    for k in range(1, order):
        rk = math.log(sigma / sigma_hist[-1 - k]) / h
        rks.append(rk)
        diffs.append((x0_hist[-1 - k] - m0) / rk)
    rks.append(1.0)
    R = np.array([[r**p for r in rks] for p in range(order)])
    rhs = _phi_rhs(hh, b_h, order)
    x_next = (sigma_next / sigma) * x - math.expm1(hh) * m0
    if x0_next is None:  # predictor UniP-order
        if order == 1:
            return x_next
        rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], rhs[:-1]).tolist()
        return x_next - b_h * sum(rho * d for rho, d in zip(rhos, diffs, strict=True))
    rhos = [0.5] if order == 1 else np.linalg.solve(R, rhs).tolist()  # corrector UniC-order
    res = sum((rho * d for rho, d in zip(rhos[:-1], diffs, strict=True)), start=rhos[-1] * (x0_next - m0))
    return x_next - b_h * res


@register("unipc", order=3, stochastic=False)
def unipc(model, x, sigmas, noise, callback, order: int = 2, variant: str = "bh2", h_max: float = H_MAX):
    """UniPC-p with the UniC corrector (Zhao et al. 2023); ``variant`` B(h) = e^h - 1 ("bh2") or h ("bh1").

    The predictor of a step longer than ``h_max`` in λ = −ln σ is UniP-1
    (:data:`~undiffuse.samplers.registry.H_MAX`); UniC still corrects it.
    """
    if variant not in ("bh1", "bh2"):
        raise UndiffuseError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    if order < 1:
        raise UndiffuseError(f"unipc needs order ≥ 1, got {order}")
    n = len(sigmas) - 1
    sigma_hist, x0_hist = [], []
    x_start, last_order = x, 1
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        if i > 0:  # UniC: redo the previous step with the x̂_0 just computed
            x = uni_step(x_start, sigma_hist, x0_hist, sigma, last_order, variant, x0_next=x0_hat)
        callback(i, sigma, x, x0_hat)
        sigma_hist, x0_hist = (sigma_hist + [sigma])[-order:], (x0_hist + [x0_hat])[-order:]
        last_order = min(order, n - i, len(x0_hist))  # warm up, and lower order at the end
        last_order = step_order(sigma, sigma_next, last_order, h_max)
        x_start = x
        x = uni_step(x, sigma_hist, x0_hist, sigma_next, last_order, variant)
    return x
