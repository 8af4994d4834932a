"""The four tasks as functions: a start (noise, or the input noised to σ_start), a σ grid down from
there, and a denoiser (guided, and wrapped for consistency where the task needs it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from .. import samplers
from ..errors import UndiffuseError
from ..models import LoadedModel, build_schedule, sigma_range
from ..process import sigmas_karras
from ..sampling import SampleRequest, cond_for, guided_denoiser, request_sigmas
from .consistency import (DecodedProjectionDenoiser, InpaintDenoiser, UpscaleDenoiser, downsample, latent_mask,
                          match_low,
                          upsample)

# denoise's own sampling defaults (the CLI's and the studio's): a deterministic solver, unguided, so the result is a
# function of the image alone; 10 steps from the image's σ, which is low next to a sample's start
DENOISE_SAMPLER, DENOISE_STEPS = "dpmpp_2m", 10


def _check_image(model: LoadedModel, image: Tensor, size: int | None = None, what: str = "image") -> Tensor:
    c, s = model.config.data.channels, size or model.config.data.image_size
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or tuple(image.shape[1:]) != (c, s, s):
        raise UndiffuseError(f"the {what} must be ({c}, {s}, {s}) for this model, got {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()):
        raise UndiffuseError(f"the {what} contains NaN or inf")
    return image.float()


def sigma_at_strength(model: LoadedModel, strength: float) -> float:
    """σ at the fraction ``strength`` of the forward process (SDEdit's t₀ = strength·T, Meng et al. 2022)."""
    if not 0 < strength <= 1:
        raise UndiffuseError(f"strength must be in (0, 1], got {strength}")
    schedule = build_schedule(model.config)
    if schedule is not None:
        return float(schedule.t_to_sigma(torch.tensor(strength * (schedule.T - 1))))
    lo, hi = sigma_range(model.config)
    return math.exp(math.log(lo) + strength * (math.log(hi) - math.log(lo)))


def _grid_from(model: LoadedModel, sigma_start: float, steps: int) -> Tensor:
    """A Karras σ grid from ``sigma_start`` down to the model's σ_min (then 0)."""
    lo = sigma_range(model.config)[0]
    return sigmas_karras(steps, lo, max(sigma_start, lo * 1.001))


def _sample(model: LoadedModel, req: SampleRequest, start: Tensor | None, sigma_start: float | None,
            wrap=lambda d: d, callback: Callback | None = None) -> Tensor:
    """Draw req.n samples in the model's space: from noise over the model's grid (start None) or from ``start`` +
    σ_start ε over a grid down from σ_start. ``callback(i, σ, x, x0_hat)`` is the sampler's, at every step."""
    denoiser, labels, text = guided_denoiser(model, req)
    denoiser = wrap(denoiser)
    sigmas = request_sigmas(model, req) if sigma_start is None else _grid_from(model, sigma_start, req.steps)
    shape = (req.n, *model.space.shape)
    gens = samplers.make_generators([req.seed + i for i in range(req.n)])
    noise = samplers.randn(shape, gens)
    x = noise * float(sigmas[0]) if start is None else start.expand(shape) + float(sigmas[0]) * noise
    return samplers.get(req.sampler)(denoiser, x, sigmas, cond=cond_for(labels, text, range(req.n)), generator=gens,
                                     callback=callback)


def _run(model: LoadedModel, req: SampleRequest, start: Tensor | None, sigma_start: float | None,
         wrap=lambda d: d, callback: Callback | None = None) -> Tensor:
    """:func:`_sample` decoded: ``start`` is in the model's space (latents for a latent model), the result images."""
    return model.space.decode(_sample(model, req, start, sigma_start, wrap, callback))


Callback = Callable[[int, float, Tensor, Tensor], object]  # the samplers' callback(i, σ, x, x0_hat)


def _latent(model: LoadedModel) -> bool:
    return model.space.kind == "latent"


@torch.no_grad()
def inpaint(model: LoadedModel, image: Tensor, mask: Tensor, req: SampleRequest, resample: int = 0,
            callback: Callback | None = None) -> Tensor:
    """Fill where ``mask`` (1, H, W) is 1 (white = fill); the rest of ``image`` is kept exactly."""
    image = _check_image(model, image)
    if mask.shape[-2:] != image.shape[-2:]:
        raise UndiffuseError(f"the mask is {tuple(mask.shape[-2:])}, the image {tuple(image.shape[-2:])}")
    known = (mask.reshape(1, 1, *mask.shape[-2:]) < 0.5).float()
    g = torch.Generator().manual_seed(req.seed + 1_000_003)
    if not _latent(model):
        return _run(model, req, None, None, lambda d: InpaintDenoiser(d, image, known, resample, g), callback)
    # latent: the known latent cells (all their pixels known) are written into x̂₀; after decoding, the known
    # pixels are pasted back, so they are kept exactly here too
    cells = latent_mask(known, model.space.factor)
    out = _run(model, req, None, None, lambda d: InpaintDenoiser(d, model.space.encode(image), cells, resample, g),
               callback)
    return known * image + (1 - known) * out


@torch.no_grad()
def upscale(model: LoadedModel, low: Tensor, factor: int, req: SampleRequest, strength: float = 1.0,
            callback: Callback | None = None) -> Tensor:
    """×``factor`` super-resolution whose output down-samples (f×f average) back to ``low``."""
    if factor not in (2, 4):
        raise UndiffuseError(f"factor must be 2 or 4, got {factor}")
    size = model.config.data.image_size
    if size % factor:
        raise UndiffuseError(f"the model's size {size} is not divisible by {factor}")
    low = _check_image(model, low, size // factor, "low-resolution image")
    start = None if strength >= 1 else model.space.encode(upsample(low, factor))
    sigma = None if strength >= 1 else sigma_at_strength(model, strength)
    if not _latent(model):
        return _run(model, req, start, sigma, lambda d: UpscaleDenoiser(d, low, factor), callback)
    # latent: the projection acts on the decoded estimate at every step, and once more on the final image
    projection = partial(match_low, low_up=upsample(low, factor), factor=factor)
    out = _run(model, req, start, sigma, lambda d: DecodedProjectionDenoiser(d, model.space, projection), callback)
    return projection(out)


@torch.no_grad()
def edit(model: LoadedModel, image: Tensor, req: SampleRequest, strength: float = 0.6,
         callback: Callback | None = None) -> Tensor:
    """SDEdit: noise ``image`` to the σ at ``strength`` and denoise it, towards a class or prompt if given."""
    image = _check_image(model, image)
    return _run(model, req, model.space.encode(image), sigma_at_strength(model, strength), callback=callback)


def estimate_noise_sigma(image: Tensor) -> float:
    """σ of additive white Gaussian noise in an image (C, H, W) in [-1, 1]: the median absolute Haar
    diagonal detail over 0.6745 (Donoho & Johnstone 1994); the detail has the noise's variance."""
    x = image.double()
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    d = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return float(d.abs().median() / 0.6745)


@torch.no_grad()
def denoise(model: LoadedModel, noisy: Tensor, req: SampleRequest, sigma: float | None = None,
            callback: Callback | None = None) -> tuple[Tensor, float]:
    """Remove Gaussian noise of σ (estimated when None): a noisy image is x = x₀ + σ ε, the sampler's own
    state at σ, so the reverse process starts right there. Returns (image, σ used)."""
    noisy = _check_image(model, noisy)
    if _latent(model):
        raise UndiffuseError(f"denoise runs in pixel space (a noisy image is the sampler's state at σ only there); "
                             f"{model.source} is a latent model: use a pixel-space model, or edit for a latent one")
    sigma = estimate_noise_sigma(noisy[0]) if sigma is None else float(sigma)
    if not sigma > 0:
        raise UndiffuseError(f"the noise level must be positive, got {sigma}")
    sigmas = _grid_from(model, sigma, req.steps)
    denoiser, labels, text = guided_denoiser(model, replace(req, n=1))
    out = samplers.get(req.sampler)(denoiser, noisy, sigmas, cond=cond_for(labels, text, range(1)),
                                    generator=samplers.make_generators([req.seed]), callback=callback)
    return out.clamp(-1, 1), sigma


__all__ = ["DENOISE_SAMPLER", "DENOISE_STEPS", "denoise", "downsample", "edit", "estimate_noise_sigma", "inpaint",
           "sigma_at_strength", "upscale"]
