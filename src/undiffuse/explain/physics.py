"""Diffusion as in physics: ink spreading in water. An image becomes a cloud of particles; the forward
process lets them diffuse into a Gaussian cloud, and a learned reverse process (a small 2-D model
trained on the cloud on the spot) gathers fresh Gaussian particles back into the shape
(Sohl-Dickstein et al. 2015; Song et al. 2021: the reverse of a diffusion is again a diffusion)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..demo import Generation, generate
from ..plots import nearest_state
from ..process import q_sample, sigma_to_alpha_bar
from ..train_toy import ToyConfig, ToyRun, train_toy

SIGMAS = (0.0, 0.1, 0.3, 0.8, 2.0, 80.0)  # noise levels shown, data → noise


def image_to_points(image: Tensor, n: int = 20_000, seed: int = 0) -> Tensor:
    """Particles placed where the image has ink: (n, 2), centred, unit standard deviation.

    Ink is a pixel's distance from the background (the median of the border pixels), so dark-on-light
    and light-on-dark images both work. Each particle lands at a random spot inside its pixel.
    """
    gray = image.float().mean(0) if image.ndim == 3 else image.float()           # (H, W) in [-1, 1]
    h, w = gray.shape
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = (gray - border.median()).abs().flatten()
    if float(ink.sum()) <= 0:
        raise ValueError("the image is blank: it has no ink to turn into particles")
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(ink / ink.sum(), n, replacement=True, generator=g)
    rows, cols = (idx // w).float(), (idx % w).float()
    xy = torch.stack([cols, h - 1 - rows], 1) + torch.rand(n, 2, generator=g) - 0.5   # y up
    xy = xy - xy.mean(0)
    return xy / xy.std()


@dataclass
class PhysicsResult:
    points: Tensor            # (n, 2) the particles of the image
    run: ToyRun
    generation: Generation
    forward: dict[float, Tensor]  # σ → the particles diffused to that level (VP scale)


def physics(image: Tensor, seconds: float = 30.0, n: int = 3000, steps: int = 40, seed: int = 0,
            progress: bool = True) -> PhysicsResult:
    """Turn ``image`` into particles, diffuse them, train a 2-D model for ``seconds`` and sample n fresh ones."""
    points = image_to_points(image, seed=seed)
    run = train_toy(ToyConfig(data="the image's particles", seconds=seconds, seed=seed), progress, points=points)
    generation = generate(run.denoiser, n, "dpmpp_2m", steps, seed=seed)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))
    shown = points[:n]
    forward = {s: q_sample(shown, float(sigma_to_alpha_bar(torch.tensor(s))), noise) for s in SIGMAS}
    return PhysicsResult(points, run, generation, forward)


def plot_physics(res: PhysicsResult) -> Figure:
    """Top: the particles diffusing, data → Gaussian. Bottom: fresh Gaussian particles gathered back."""
    fig = Figure(figsize=(15, 5.4), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(SIGMAS))
    colour = "#2b6cb0"
    for k, sigma in enumerate(SIGMAS):
        top, bottom = axes[0, k], axes[1, k]
        pts = res.forward[sigma]
        top.scatter(pts[:, 0], pts[:, 1], s=1.2, color=colour, linewidths=0, rasterized=True)
        ab = float(sigma_to_alpha_bar(torch.tensor(sigma)))
        top.set_title("the image's particles" if sigma == 0 else f"diffused: σ = {sigma:g} (ᾱ = {ab:.3f})",
                      fontsize=9)
        gen = res.generation
        back = gen.samples if sigma == 0 else gen.path[nearest_state(gen.path_sigmas, sigma)]
        bottom.scatter(back[:, 0], back[:, 1], s=1.2, color="#c05621", linewidths=0, rasterized=True)
        bottom.set_title("gathered back: new particles" if sigma == 0 else f"reverse process at σ ≈ {sigma:g}",
                         fontsize=9)
        for ax in (top, bottom):
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Top, left to right: particles of ink diffuse until they are a Gaussian cloud. "
                 "Bottom, right to left: the learned reverse process gathers fresh Gaussian particles back "
                 "(particles in VP scale x/√(1+σ²))", fontsize=10.5)
    return fig
