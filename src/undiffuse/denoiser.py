"""Preconditioning wrappers: any network → one denoiser D(x, σ, cond) ≈ E[x_0 | x].

``x`` is in σ-form, x = x_0 + σ ε, and ``sigma`` has shape (batch,). A network F is called as
``F(x_in, noise_cond, cond)`` and predicts ε, x_0, v, a flow velocity (or EDM's F_θ); each wrapper converts its
parameterisation once, using the conversions below — the only place they are written.

The VP view: with α = 1/√(1+σ²), the network sees z = α x = α x_0 + (σα) ε, which is the DDPM
sample x_t for ᾱ_t = α²; v = α ε - σα x_0 (Salimans & Ho 2022, §4).

The flow view: with t = σ/(1+σ), the network sees x_t = (1-t) x = (1-t) x_0 + t ε, the rectified-flow
sample, and predicts the velocity dx_t/dt = ε - x_0 (Liu et al. 2022; Esser et al. 2024, §2).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .errors import UndiffuseError
from .nets.cpu import check_precision, inference_autocast, resolve_precision
from .process import GRID_SIGMA_MAX, DiscreteSchedule

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")  # the VP network's outputs; "flow" has its own wrapper
CONVERSIONS: tuple[str, ...] = (*PREDICTIONS, "flow")


def _b(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape σ of shape (batch,) (or a scalar) to broadcast against x."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *[1] * (x.ndim - 1)) if sigma.ndim == 1 else sigma


# --------------------------------------------------------------------------- conversions
def eps_to_x0(x: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """x̂_0 = x - σ ε̂."""
    return x - _b(sigma, x) * eps


def x0_to_eps(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """ε̂ = (x - x̂_0)/σ."""
    return (x - x0) / _b(sigma, x)


def v_to_x0(x: Tensor, sigma: Tensor, v: Tensor) -> Tensor:
    """x̂_0 = α z - σα v with z = α x, i.e. (x - σ√(1+σ²) v)/(1+σ²)."""
    s = _b(sigma, x)
    alpha = (1 + s**2).rsqrt()
    return alpha**2 * x - s * alpha * v


def x0_to_v(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """v = α ε - σα x_0 (Salimans & Ho 2022, eq. 6 in σ-form)."""
    s = _b(sigma, x)
    alpha = (1 + s**2).rsqrt()
    return alpha * (x - x0) / s - s * alpha * x0


def flow_to_x0(x: Tensor, sigma: Tensor, v: Tensor) -> Tensor:
    """x̂_0 = x_t - t v̂ with x_t = x/(1+σ), t = σ/(1+σ) (rectified flow: x_t = (1-t) x_0 + t ε, v = ε - x_0)."""
    s = _b(sigma, x)
    return (x - s * v) / (1 + s)


def x0_to_flow(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """The flow velocity v = ε - x_0 = (x - x_0)/σ - x_0."""
    return (x - x0) / _b(sigma, x) - x0


def x0_to_score(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """∇_x log p_σ(x) = (x̂_0 - x)/σ² (Tweedie's formula)."""
    return (x0 - x) / _b(sigma, x) ** 2


def score_to_x0(x: Tensor, sigma: Tensor, score: Tensor) -> Tensor:
    """x̂_0 = x + σ² ∇ log p_σ(x)."""
    return x + _b(sigma, x) ** 2 * score


def to_x0(prediction: str, x: Tensor, sigma: Tensor, out: Tensor) -> Tensor:
    """Convert a network output of the given parameterisation to x̂_0."""
    if prediction == "eps":
        return eps_to_x0(x, sigma, out)
    if prediction == "x0":
        return out
    if prediction == "v":
        return v_to_x0(x, sigma, out)
    if prediction == "flow":
        return flow_to_x0(x, sigma, out)
    raise UndiffuseError(f"unknown prediction type {prediction!r}; known: {', '.join(CONVERSIONS)}")


def from_x0(prediction: str, x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """The network target for a parameterisation, given the clean x_0 (inverse of :func:`to_x0`)."""
    if prediction == "eps":
        return x0_to_eps(x, sigma, x0)
    if prediction == "x0":
        return x0
    if prediction == "v":
        return x0_to_v(x, sigma, x0)
    if prediction == "flow":
        return x0_to_flow(x, sigma, x0)
    raise UndiffuseError(f"unknown prediction type {prediction!r}; known: {', '.join(CONVERSIONS)}")


# --------------------------------------------------------------------------- wrappers
class Denoiser(nn.Module):
    """Base class: ``forward(x, sigma, cond=None) -> x̂_0`` with ``sigma`` of shape (batch,)."""

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class VPDenoiser(Denoiser):
    """A DDPM-style network (ε, x_0 or v) on the VP input z = x/√(1+σ²).

    With a ``schedule`` the network is conditioned on the (fractional) discrete step t, as in
    DDPM/DDIM; without one on the continuous noise level c_noise = ¼ ln σ.
    """

    def __init__(self, net: nn.Module, prediction: Prediction = "eps",
                 schedule: DiscreteSchedule | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise UndiffuseError(f"unknown prediction type {prediction!r}; known: {', '.join(PREDICTIONS)}")
        self.net, self.prediction, self.schedule = net, prediction, schedule

    def noise_cond(self, sigma: Tensor) -> Tensor:
        """What the network is told about the noise level: t (discrete) or ¼ ln σ."""
        if self.schedule is not None:
            return self.schedule.sigma_to_t(sigma.detach().cpu()).to(sigma.device, torch.float32)
        return sigma.log() / 4

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s = _b(sigma, x)
        out = self.net(x * (1 + s**2).rsqrt(), self.noise_cond(sigma), cond).to(x.dtype)
        return to_x0(self.prediction, x, sigma, out)


class EDMDenoiser(Denoiser):
    """EDM preconditioning D = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, Table 1)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s, sd = _b(sigma, x), self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = (s**2 + sd**2).rsqrt()
        out = self.net(c_in * x, sigma.log() / 4, cond).to(x.dtype)
        return c_skip * x + c_out * out


class FlowDenoiser(Denoiser):
    """A rectified-flow velocity network as a denoiser: x_t = x/(1+σ), x̂_0 = x_t - t F(x_t, t_scale·t) with
    t = σ/(1+σ) (c_in = 1-t; SD3, Esser et al. 2024, §2-3).

    The network is told ``t_scale``·t, by default t ∈ [0, 1) scaled to [0, 1000) as SD3 and diffusers'
    FlowMatchEulerDiscreteScheduler pass it: the range the "positional" noise embedding is made for.
    """

    def __init__(self, net: nn.Module, t_scale: float = 1000.0):
        super().__init__()
        if not (math.isfinite(t_scale) and t_scale > 0):
            raise UndiffuseError(f"the flow model's t_scale must be a positive number, got {t_scale}")
        self.net, self.t_scale = net, t_scale

    def noise_cond(self, sigma: Tensor) -> Tensor:
        """What the network is told about the noise level: t_scale · t, t = σ/(1+σ)."""
        return self.t_scale * sigma / (1 + sigma)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s = _b(sigma, x)
        v = self.net(x / (1 + s), self.noise_cond(sigma), cond).to(x.dtype)   # x_t = (1-t) x
        return flow_to_x0(x, sigma, v)


class ClampedDenoiser(Denoiser):
    """Clamp x̂_0 to the data range, e.g. [-1, 1] for images (DDPM's "clip_sample")."""

    def __init__(self, inner: nn.Module, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.inner, self.lo, self.hi = inner, lo, hi

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.inner(x, sigma, cond).clamp(self.lo, self.hi)


class EpsilonScaledDenoiser(Denoiser):
    """Divide the predicted noise by ``scale`` (ε scaling, Ning et al. 2024, "Elucidating the Exposure Bias
    in Diffusion Models", eq. 13): x̂_0' = x − (x − x̂_0)/scale.

    A sampler's inputs at step t carry more noise than the network saw in training (exposure bias); scaling
    ε̂ down by a little (1.005 here) counters it at no cost. It acts for σ ≤ ``sigma_max`` (80, where Karras grids
    start) only: above it the (1 − 1/scale)·(x − x̂_0) it adds grows with σ (at the first step of a trailing grid on a
    cosine chain, σ = 2·10⁴, it would be ~100 σ_data: the samples broke), and the image is pure noise there anyway.
    """

    def __init__(self, inner: nn.Module, scale: float, sigma_max: float = GRID_SIGMA_MAX):
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise UndiffuseError(f"the ε scale must be a positive number, got {scale}")
        self.inner, self.scale, self.sigma_max = inner, scale, sigma_max

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        x0 = self.inner(x, sigma, cond)
        scale = torch.where(sigma.reshape(-1, *[1] * (x.ndim - 1)) <= self.sigma_max, self.scale, 1.0)
        return x - (x - x0) / scale


class AutocastDenoiser(Denoiser):
    """Run the inner denoiser's network in bf16 (autocast, :func:`~undiffuse.nets.cpu.inference_autocast`);
    x̂_0 comes back in x's dtype.

    Only the network's convolutions, linears and matmuls change precision: the preconditioning around it
    and the sampler's updates are element-wise on fp32 tensors, so they stay fp32 (bench/README.md has
    the speed and the quality check).
    """

    def __init__(self, inner: nn.Module, precision: str = "bf16"):
        super().__init__()
        self.inner, self.precision = inner, check_precision(precision)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        with inference_autocast(self.precision, x.device.type):
            x0 = self.inner(x, sigma, cond)
        return x0.to(x.dtype)


def with_precision(denoiser: nn.Module, precision: str, device_type: str = "cpu") -> nn.Module:
    """The denoiser whose network runs in ``precision``: "fp32" returns it unchanged, "bf16" wraps it, "auto" is
    the one of the two the hardware runs faster (:func:`~undiffuse.nets.cpu.resolve_precision`)."""
    precision = resolve_precision(precision, device_type)
    return denoiser if precision == "fp32" else AutocastDenoiser(denoiser, precision)


def shaped(denoiser: nn.Module, eps_scale: float = 1.0, clip_x0: bool = False) -> nn.Module:
    """The denoiser with ε scaling (:class:`EpsilonScaledDenoiser`, if ``eps_scale`` ≠ 1) and x̂_0 clipped to
    [-1, 1] (:class:`ClampedDenoiser`, if ``clip_x0``), in that order; unchanged with the defaults."""
    if eps_scale != 1.0:
        denoiser = EpsilonScaledDenoiser(denoiser, eps_scale)
    return ClampedDenoiser(denoiser) if clip_x0 else denoiser
