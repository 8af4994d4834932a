"""Data consistency on the denoiser's estimate x̂₀, so any sampler keeps what is known about the image.

- Inpainting: x̂₀ ← m ⊙ y + (1 - m) ⊙ x̂₀ on the known pixels m (the replacement method of Song et al.
  2021, App. I, applied to x̂₀), optionally with RePaint-style resampling (Lugmayr et al. 2022):
  r times per call, re-noise the blended estimate to the current σ and denoise again, which lets the
  hole agree with its surroundings.
- Reconstruction guidance (Ho et al. 2022, Video Diffusion Models, eq. 7): the unknown part of x̂₀ also moves
  down the gradient of the known part's reconstruction error with respect to the noisy input,
  x̂₀ᵇ ← x̂₀ᵇ − (w_r/2) ∇_{xᵇ} ‖m ⊙ (y − x̂₀(x))‖², so the net's own estimate of the known part pulls the rest into
  agreement with it (replacement alone fixes the known part but not what the net makes of the rest).
- Super-resolution: x̂₀ ← x̂₀ - U(A x̂₀) + U(y), with A the f×f average pooling and U nearest
  up-sampling: the low frequencies come from the input, the details from the model (ILVR, Choi et al.
  2021; the DDRM projection, Kawar et al. 2022, for this A). A x̂₀ = y holds exactly, since A U = I.
- In a latent space a pixel constraint is applied through the autoencoder: x̂₀ ← E(P(D(x̂₀))) with P the
  pixel projection (as latent-space guidance methods decode the estimate, e.g. Rout et al. 2023); the final
  image is projected once more in pixels, so the stated guarantee holds exactly for what is returned.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..denoiser import Denoiser


def downsample(x: Tensor, factor: int) -> Tensor:
    """A: f×f average pooling, (B, C, H, W) -> (B, C, H/f, W/f)."""
    return F.avg_pool2d(x, factor)


def upsample(y: Tensor, factor: int) -> Tensor:
    """U: nearest up-sampling, the right inverse of :func:`downsample` (A U y = y)."""
    return F.interpolate(y, scale_factor=factor, mode="nearest")


class InpaintDenoiser(Denoiser):
    """D with the known pixels of ``known`` (where ``mask`` is 1) written into every x̂₀."""

    def __init__(self, inner: nn.Module, known: Tensor, mask: Tensor, resample: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.inner, self.known, self.mask, self.resample = inner, known, mask.to(known.dtype), resample
        self.generator = generator

    def _blend(self, x0: Tensor) -> Tensor:
        return self.mask * self.known + (1 - self.mask) * x0

    def _resampled(self, x0: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """Re-noise the harmonised estimate to σ and look again, ``resample`` times."""
        s = sigma.reshape(-1, *[1] * (x0.ndim - 1))
        for _ in range(self.resample):
            noise = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype).to(x0.device)
            x0 = self._blend(self.inner(x0 + s * noise, sigma, cond).clamp(-1, 1))
        return x0

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self._resampled(self._blend(self.inner(x, sigma, cond).clamp(-1, 1)), sigma, cond)


class ReconstructionGuidedDenoiser(InpaintDenoiser):
    """:class:`InpaintDenoiser` whose unknown part of x̂₀ is also moved by reconstruction guidance of weight
    ``weight`` (one backward pass through the denoiser per call)."""

    def __init__(self, inner: nn.Module, known: Tensor, mask: Tensor, weight: float, resample: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__(inner, known, mask, resample, generator)
        self.weight = weight

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.inner(xg, sigma, cond)
            error = (self.mask * (self.known - x0)).square().sum()
            (grad,) = torch.autograd.grad(error, xg)
        x0 = x0.detach() - (1 - self.mask) * (self.weight / 2) * grad
        return self._resampled(self._blend(x0.clamp(-1, 1)), sigma, cond)


class UpscaleDenoiser(Denoiser):
    """D whose x̂₀ always down-samples (f×f average) to the low-resolution input ``low``."""

    def __init__(self, inner: nn.Module, low: Tensor, factor: int):
        super().__init__()
        self.inner, self.factor = inner, factor
        self.low_up = upsample(low, factor)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return match_low(self.inner(x, sigma, cond).clamp(-1, 1), self.low_up, self.factor)


def match_low(x0: Tensor, low_up: Tensor, factor: int) -> Tensor:
    """The image nearest ``x0`` whose f×f average is the low-resolution input (``low_up`` = U(y))."""
    return x0 - upsample(downsample(x0, factor), factor) + low_up


class DecodedProjectionDenoiser(Denoiser):
    """A latent model's D with a pixel-space projection applied through the autoencoder: E(P(D(x̂₀)))."""

    def __init__(self, inner: nn.Module, space: Any, project: Any):
        super().__init__()
        self.inner, self.space, self.project = inner, space, project

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.space.encode(self.project(self.space.decode(self.inner(x, sigma, cond))))


def latent_mask(known: Tensor, factor: int) -> Tensor:
    """Known pixels (1, 1, H, W) → known latent cells (1, 1, H/f, W/f): a cell is known when all its pixels are."""
    return -F.max_pool2d(-known, factor)
