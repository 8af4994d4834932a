"""Figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from PIL import Image, PngImagePlugin
from torch import Tensor

from . import __version__
from .images import infotext, to_uint8
from .process import DiscreteSchedule, q_sample, sigma_to_alpha_bar

if TYPE_CHECKING:
    from .train_toy import ToyRun


class PointPath(Protocol):
    """A sampler's walk over 2-D points (:class:`undiffuse.demo.Generation` is one)."""

    samples: Tensor      # (n, 2)
    path: Tensor         # (K + 1, n, 2)
    path_sigmas: Tensor  # (K + 1, n)


class DemoFigure(Protocol):
    """What :func:`plot_demo` draws (:class:`undiffuse.demo.DemoResult` is one). Described here, not imported: the
    demo imports its figure from this module, and this module imports nothing of the demo."""

    run: ToyRun
    sampler: str
    data: Tensor
    generation: PointPath
    metrics: dict[str, dict[str, float]]

NOISE_LEVELS = (0.15, 0.5, 1.5, 5.0)  # σ of the forward-process panels, data → noise
LIMIT = 2.9                           # every panel shows [-LIMIT, LIMIT]²
GREY = "#9a9a9a"


def _colours(points: Tensor) -> np.ndarray:
    """A hue per point from its angle about the origin, so that a point keeps its colour along its path."""
    hue = (torch.atan2(points[:, 1], points[:, 0]).numpy() + np.pi) / (2 * np.pi)
    return hsv_to_rgb(np.stack([hue, np.full_like(hue, 0.75), np.full_like(hue, 0.8)], 1))


def _panel(ax: Axes, title: str, points: Tensor | None = None, colours: np.ndarray | None = None) -> None:
    ax.set_xlim(-LIMIT, LIMIT)
    ax.set_ylim(-LIMIT, LIMIT)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#d0d0d0")
    ax.set_title(title, fontsize=9.5)
    if points is not None:
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=2.5, c=colours, linewidths=0, rasterized=True)


def nearest_state(path_sigmas: Tensor, sigma: float) -> int:
    """Index of the sampler state whose (median) σ is nearest to ``sigma`` in log σ."""
    median = path_sigmas[:-1].median(dim=1).values.double()
    return int((median.log() - np.log(sigma)).abs().argmin())


def plot_demo(result: DemoFigure, path: Path | str) -> Path:
    """Forward process (top), the sampler walking it back (bottom), trajectories (right); writes a PNG."""
    run, gen, data = result.run, result.generation, result.data
    ddpm = DiscreteSchedule.from_name("linear")  # only to name the DDPM step that each σ matches
    fig = Figure(figsize=(17.0, 6.9), dpi=100, layout="constrained")
    grid = GridSpec(2, 7, figure=fig)
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(run.config.seed))
    data_colours, sample_colours = _colours(data), _colours(gen.samples)
    n_steps = len(gen.path) - 1

    _panel(fig.add_subplot(grid[0, 0]), f"data: {run.config.data}", data, data_colours)
    _panel(fig.add_subplot(grid[1, 0]), f"generated: {result.sampler}\n{len(gen.samples)} samples",
           gen.samples, sample_colours)
    for col, sigma in enumerate(NOISE_LEVELS, start=1):
        alpha_bar = float(sigma_to_alpha_bar(torch.tensor(sigma)))
        t = float(ddpm.sigma_to_t(torch.tensor(sigma)))
        x_t = q_sample(data, alpha_bar, noise)  # the real forward process, x_t = √ᾱ x0 + √(1-ᾱ) ε
        _panel(fig.add_subplot(grid[0, col]), f"x_t ~ q(x_t | x0): σ = {sigma:g}, ᾱ = {alpha_bar:.2f}\n"
               f"(DDPM linear schedule: t ≈ {t:.0f})", x_t, data_colours)
        k = nearest_state(gen.path_sigmas, sigma)
        _panel(fig.add_subplot(grid[1, col]), f"sampler's x at σ = {float(gen.path_sigmas[k].median()):.3g}\n"
               f"(step {k + 1} of {n_steps})", gen.path[k], sample_colours)

    ax = fig.add_subplot(grid[:, 5:])
    _panel(ax, f"{result.sampler} trajectories: noise (grey) → samples")
    shown = torch.arange(0, len(gen.samples), max(1, len(gen.samples) // 400))
    lines = gen.path[:, shown].permute(1, 0, 2).numpy()                          # (L, K+1, 2)
    ax.add_collection(LineCollection(lines, colors=sample_colours[shown.numpy()], linewidths=0.6, alpha=0.3))
    start, end = gen.path[0, shown], gen.samples
    ax.scatter(start[:, 0].numpy(), start[:, 1].numpy(), s=5, c=GREY, linewidths=0, rasterized=True)
    ax.scatter(end[:, 0].numpy(), end[:, 1].numpy(), s=2.5, c=sample_colours, linewidths=0, rasterized=True)
    ed = result.metrics["energy distance"]
    ax.text(0.02, 0.02, "energy distance to fresh data\n"
            f"  generated samples  {ed['generated']:.4f}\n  a fresh data set   {ed['fresh data']:.4f}\n"
            f"  N(0, I) noise      {ed['noise']:.4f}", transform=ax.transAxes, fontsize=9, family="monospace",
            va="bottom", bbox={"facecolor": "white", "edgecolor": "#d0d0d0", "alpha": 0.85})

    fig.suptitle(f"An MLP denoiser trained for {run.seconds:.0f} s ({run.steps:,} steps) on {run.config.data}.  "
                 f"Top: the forward process adds noise.  Bottom: {result.sampler} removes it "
                 f"({n_steps} steps, Karras σ grid; x shown as x/√(1+σ²)).\n"
                 "Colour: the angle of where a point starts (top) or ends (bottom).", fontsize=11.5)
    c = run.config
    params = {"data": c.data, "model": f"MLP {c.width}x{c.depth}, EDM", "train_steps": run.steps,
              "sampler": result.sampler, "steps": n_steps, "sigma_schedule": "karras", "seed": c.seed}
    return save_figure(fig, path, params)


def save_figure(fig: Figure, path: Path | str, params: dict[str, Any]) -> Path:
    """Write ``fig`` as a 256-colour PNG (a third of the RGBA size, no visible change for plots)
    carrying ``params`` in its text chunks, as :func:`undiffuse.images.save_png` does."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(params, image.size))
    info.add_text("undiffuse", json.dumps(params))
    info.add_text("Software", f"undiffuse {__version__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, dither=Image.Dither.NONE).save(path, pnginfo=info, optimize=True)
    return path


def plot_nearest(samples: Tensor, neighbours: Tensor, distances: Tensor, titles: list[str],
                 path: Path | str, params: dict[str, Any], test_median: float | None = None) -> Path:
    """Each generated sample (left, its title above) beside its k nearest training images and their
    pixel-space L2 distances; ``samples`` (n, C, H, W), ``neighbours`` (n, k, C, H, W), in [-1, 1]."""
    n, k = neighbours.shape[:2]
    cols = 2
    fig = Figure(figsize=(cols * (k + 1.4) * 1.05, n / cols * 1.25 + 0.9), dpi=100, layout="constrained")
    grid = GridSpec((n + cols - 1) // cols, cols * (k + 2), figure=fig,
                    width_ratios=([1] * (k + 1) + [0.35]) * cols)
    gray = samples.shape[1] == 1

    def show(ax: Axes, img: Tensor, title: str, colour: str = "black") -> None:
        a = to_uint8(img)
        ax.imshow(a, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(1.5)
        ax.set_title(title, fontsize=8, color=colour)

    for i in range(n):
        row, col0 = divmod(i, cols)
        col0 *= k + 2
        show(fig.add_subplot(grid[row, col0]), samples[i], titles[i], "#c0392b")
        for j in range(k):
            show(fig.add_subplot(grid[row, col0 + 1 + j]), neighbours[i, j], f"d = {float(distances[i, j]):.1f}")
    floor = f"; unseen test images lie a median {test_median:.1f} from theirs" if test_median is not None else ""
    fig.suptitle(f"Generated (red) beside its {k} nearest training images, L2 distance in pixels [-1, 1]{floor}",
                 fontsize=10)
    return save_figure(fig, path, params)
