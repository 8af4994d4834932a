"""An adaptive-step solver: DPM-Solver-23 with error control, per-sample step sizes."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UndiffuseError
from .registry import register


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


def _coeffs(rh: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Exponential-integrator weights over a step of rh in λ: e^{-rh}, rh·φ_1, rh·φ_2 (data prediction)."""
    return _col((-rh).exp(), like), _col(-torch.expm1(-rh), like), _col(rh + torch.expm1(-rh), like)


@register("adaptive", order=3, stochastic=False, adaptive=True)
def adaptive(model, x, sigmas, noise, callback, rtol: float = 0.01, atol: float = 0.005,
             h_init: float = 0.5, max_steps: int = 10_000, info: dict[str, Any] | None = None):
    """DPM-Solver-23 in data-prediction form with error control (Lu et al. 2022, §4.2), steps in λ = -ln σ.

    Each attempt takes a 2nd- and a 3rd-order singlestep solution (r = 1/3, 2/3; 3 evaluations);
    their difference, relative to atol + rtol·|x|, accepts or shrinks the step. The solve runs from
    σ[0] to the smallest non-zero σ of the grid, then returns x̂_0 there. Each sample keeps its own
    step size, so its path never depends on the batch. ``info`` (a dict) receives ``nfe``
    (denoiser calls), ``nfe_per_sample``, ``steps`` (attempts) and ``rejected``.
    """
    if rtol <= 0 or atol <= 0:
        raise UndiffuseError(f"adaptive needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
    x, lam_end = x.clone(), -math.log(sigmas[-2])
    batch = x.shape[0]
    lam = torch.full((batch,), -math.log(sigmas[0]), dtype=torch.float64, device=x.device)
    h = torch.full_like(lam, abs(h_init))
    nfe = torch.zeros(batch, dtype=torch.long)
    x0_hat = torch.zeros_like(x)
    calls = steps = rejected = 0

    def denoise(xs, lam_s, idx):
        nonlocal calls
        calls += 1
        nfe[idx.cpu()] += 1
        return model(xs, (-lam_s).exp().to(xs.dtype), rows=idx)

    while True:
        active = torch.nonzero(lam < lam_end - 1e-12).flatten()
        if len(active) == 0:
            break
        if steps >= max_steps:
            raise UndiffuseError(f"adaptive solver did not finish in {max_steps} steps; loosen rtol/atol")
        xa, la = x[active], lam[active]
        ha = torch.minimum(h[active], lam_end - la)  # never step past the end
        d_s = denoise(xa, la, active)
        x0_hat[active] = d_s
        callback(steps, (-lam).exp(), x, x0_hat)
        steps += 1
        a1, p1, _ = _coeffs(ha / 3, x)
        d_1 = denoise(a1 * xa + p1 * d_s, la + ha / 3, active)
        a2, p2, q2 = _coeffs(2 * ha / 3, x)
        d_2 = denoise(a2 * xa + p2 * d_s + q2 * (d_1 - d_s) * 3 / _col(ha, x), la + 2 * ha / 3, active)
        a, p, q = _coeffs(ha, x)
        x_2 = a * xa + p * d_s + q * (d_1 - d_s) * 3 / _col(ha, x)          # DPM-Solver-2 (r = 1/3)
        x_3 = a * xa + p * d_s + q * (d_2 - d_s) * 1.5 / _col(ha, x)        # DPM-Solver-3 (r = 1/3, 2/3)
        scale = atol + rtol * torch.maximum(xa.abs(), x_3.abs())
        err_norm = ((x_3 - x_2) / scale).double().pow(2).flatten(1).mean(1).sqrt()  # RMS per sample
        ok = err_norm <= 1
        x[active[ok]], lam[active[ok]] = x_3[ok], la[ok] + ha[ok]
        rejected += int((~ok).sum())
        # h ← h · 0.9 · err^(-1/3), limited to a factor in [0.2, 5] (the usual step-size controller).
        h[active] = ha * (0.9 * err_norm.clamp_min(1e-10) ** (-1 / 3)).clamp(0.2, 5.0)
    x0_hat = model(x, sigmas[-2])
    calls += 1
    nfe += 1
    if info is not None:
        info.update(nfe=calls, nfe_per_sample=nfe.tolist(), steps=steps, rejected=rejected)
    return x0_hat
