"""The latent space on the explain page: an image, its latent channels, what the decoder makes of them, and the
reverse process seen through the decoder (Rombach et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from ..models import LoadedModel
from ..nets.autoencoder import psnr
from .reverse import _show


@dataclass
class LatentView:
    image: Tensor        # (C, H, W) in [-1, 1]
    latent: Tensor       # (c, h, w) scaled latents
    decoded: Tensor      # (C, H, W)
    psnr: float
    scale: float


def latent_view(model: LoadedModel, image: Tensor) -> LatentView:
    """Encode one image into the model's latent space and decode it again."""
    space = model.space
    z = space.encode(image[None])[0]
    back = space.decode(z[None])[0]
    return LatentView(image, z, back, float(psnr(back[None], image[None])[0]), space.scale)


def plot_latent(view: LatentView) -> Figure:
    """The image, each latent channel (a map of h×w numbers, unit variance by the scale factor), the decoded image."""
    c = view.latent.shape[0]
    fig = Figure(figsize=(1.7 * (c + 2), 2.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, c + 2)
    _show(axes[0], view.image)
    axes[0].set_title(f"image {view.image.shape[-1]}×{view.image.shape[-2]}", fontsize=8)
    for i in range(c):
        _show(axes[i + 1], view.latent[i:i + 1], -3, 3, cmap="RdBu_r")
        axes[i + 1].set_title(f"latent channel {i + 1}\n{view.latent.shape[-1]}×{view.latent.shape[-2]}", fontsize=8)
    _show(axes[-1], view.decoded)
    axes[-1].set_title(f"decoded, PSNR {view.psnr:.1f} dB", fontsize=8)
    return fig


def plot_decoded_reverse(sigmas: list[float], x: Tensor, x0_hat: Tensor, final: Tensor, columns: int = 8) -> Figure:
    """The reverse process through the decoder: the decoded state x_t (top) and decoded estimate x̂₀ (bottom)."""
    k = len(sigmas)
    shown = sorted(set(np.linspace(0, k - 1, columns).round().astype(int).tolist()))
    fig = Figure(figsize=(1.35 * (len(shown) + 1), 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(shown) + 1)
    for c, i in enumerate(shown):
        _show(axes[0, c], x[i])
        _show(axes[1, c], x0_hat[i])
        axes[0, c].set_title(f"step {i + 1}/{k}\nσ = {sigmas[i]:.3g}", fontsize=8)
    axes[0, 0].set_ylabel("decoded x_t", fontsize=8)
    axes[1, 0].set_ylabel("decoded x̂₀", fontsize=8)
    for r in range(2):
        _show(axes[r, -1], final)
    axes[0, -1].set_title("sample", fontsize=8)
    return fig


def latent_numbers(view: LatentView) -> dict:
    z = view.latent
    return {"latent_shape": list(z.shape), "pixels": view.image.numel(), "latent_values": z.numel(),
            "compression": view.image.numel() / z.numel(), "scale": view.scale, "psnr_db": view.psnr,
            "latent_std": float(z.std()), "latent_mean": float(z.mean())}
