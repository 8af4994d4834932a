"""Denoising losses for a preconditioned denoiser D(x, σ) ≈ E[x_0 | x].

Every parameterisation's squared error is a σ-dependent multiple of the x_0 error:
‖ε̂ - ε‖² = ‖x̂_0 - x_0‖²/σ², ‖v̂ - v‖² = (1+σ²)/σ² ‖x̂_0 - x_0‖², and EDM's
‖F_θ - F_target‖² = ‖x̂_0 - x_0‖²/c_out² (Karras et al. 2022, eq. 8 with λ = 1/c_out²), and a flow
velocity's ‖v̂ - v‖² = ‖x̂_0 - x_0‖²/t² = (1+σ)²/σ² ‖x̂_0 - x_0‖² (x̂_0 = x_t - t v̂, t = σ/(1+σ)).
So one loss, λ(σ) ‖D(x_0 + σε, σ) - x_0‖², trains any wrapper on its own network's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .denoiser import EDMDenoiser, FlowDenoiser, VPDenoiser
from .process import add_noise


def native_weight(denoiser: nn.Module, sigma: Tensor) -> Tensor:
    """λ(σ) that turns the x_0 error into the squared error of the wrapped network's own output."""
    if isinstance(denoiser, VPDenoiser):
        if denoiser.prediction == "eps":
            return sigma**-2
        if denoiser.prediction == "v":
            return (1 + sigma**2) / sigma**2
        return torch.ones_like(sigma)
    if isinstance(denoiser, EDMDenoiser):
        sd = denoiser.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
    if isinstance(denoiser, FlowDenoiser):  # the velocity MSE of rectified flow (SD3's L with w_t = 1)
        return ((1 + sigma) / sigma) ** 2
    return torch.ones_like(sigma)  # a plain denoiser: regress x_0


def min_snr_weight(sigma: Tensor, gamma: float = 5.0) -> Tensor:
    """Min-SNR-γ: λ = min(SNR, γ) on the x_0 error, SNR = 1/σ² (Hang et al. 2023, eq. 9–10).

    That is min(SNR, γ)/SNR on the ε error and min(SNR, γ)/(SNR + 1) on the v error. SNR does not depend on
    the scaling of x, so a flow model's SNR is (1-t)²/t² = 1/σ² too: min(SNR, γ)·t² on its velocity error.
    """
    return torch.clamp(sigma**-2, max=gamma)


def denoising_loss(denoiser: nn.Module, x0: Tensor, sigma: Tensor, cond: Any = None, *,
                   noise: Tensor | None = None, min_snr_gamma: float | None = None) -> Tensor:
    """Mean over the batch of λ(σ) ‖D(x_0 + σε, σ) - x_0‖² / d, with λ native or min-SNR-γ.

    ``sigma`` has shape (batch,) and is drawn from the training density by the caller (for a
    discrete schedule: σ_t with t uniform, which makes the native ε loss DDPM's L_simple, eq. 14).
    """
    x = add_noise(x0, sigma, noise)
    x0_hat = denoiser(x, sigma, cond)
    error = (x0_hat - x0).pow(2).flatten(1).mean(1)                                 # (B,)
    s = sigma.to(error.dtype)
    weight = native_weight(denoiser, s) if min_snr_gamma is None else min_snr_weight(s, min_snr_gamma)
    return (weight * error).mean()
