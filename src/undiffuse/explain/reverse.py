"""The reverse process of a trained image model: what the network sees and predicts at each step, its
shape, why its images are new, DDPM against DDIM, and guidance."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle
from torch import Tensor, nn

from ..data.training import load_training_data
from ..errors import UndiffuseError
from ..evaluation.nearest import nearest_neighbours
from ..models import LoadedModel
from ..sampling import SampleRequest, card_request, generate


def request(model: LoadedModel, **kw) -> SampleRequest:
    """One sample drawn as the model card draws it (:func:`~undiffuse.sampling.card_request`: sampler, steps, grid,
    guidance with its interval and projection, ε scaling), with ``kw`` in place of any of them."""
    return card_request(model, **{"n": 1, **kw})


@dataclass
class ReversePath:
    """One sample's reverse process: per step the state x (VP scale), the estimate x̂₀ and the noise ε̂."""

    sigmas: list[float]
    x: Tensor       # (K, C, H, W)
    x0_hat: Tensor  # (K, C, H, W)
    eps_hat: Tensor  # (K, C, H, W)
    final: Tensor   # (C, H, W)
    latent: tuple | None = None  # a latent model's own (σ's, x, x̂₀) in its latent space


def reverse_path(model: LoadedModel, req: SampleRequest) -> ReversePath:
    """Run one sample and record, at every step, x/√(1+σ²) (what the DDPM chain would hold), the
    network's x̂₀ and its noise estimate ε̂ = (x - x̂₀)/σ; for a latent model x and x̂₀ decoded to images."""
    rec: dict[str, list] = {"sigma": [], "x": [], "x0": [], "eps": []}

    def record(i: int, sigma: float, x: Tensor, x0_hat: Tensor) -> None:
        s = float(torch.as_tensor(sigma).flatten()[0])
        rec["sigma"].append(s)
        rec["x"].append(x[0])
        rec["x0"].append(x0_hat[0])
        rec["eps"].append((x[0] - x0_hat[0]) / s)

    images, _ = generate(model, replace(req, n=1), progress=False, callback=record)
    x, x0, eps = torch.stack(rec["x"]), torch.stack(rec["x0"]), torch.stack(rec["eps"])
    latent = None
    if model.space.kind == "latent":  # seen through the decoder; ε̂: its first C latent channels, enlarged
        latent = (rec["sigma"], x, x0)
        x, x0 = decoded_path(model, rec["sigma"], x, x0)
        c, f = model.space.image_channels, model.space.factor
        eps = torch.nn.functional.interpolate(eps[:, :c], scale_factor=f, mode="nearest")
    else:
        s = torch.tensor(rec["sigma"], dtype=torch.float32).reshape(-1, 1, 1, 1)
        x = x / (1 + s * s).sqrt()
    return ReversePath(rec["sigma"], x, x0, eps, images[0], latent)


def decoded_path(model: LoadedModel, sigmas: list[float], x: Tensor, x0_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Decode a recorded latent reverse path: the states x (in σ-form, shown at VP scale) and the estimates x̂₀."""
    s = torch.tensor(sigmas, dtype=torch.float32).reshape(-1, 1, 1, 1)
    return model.space.decode(x / (1 + s * s).sqrt()), model.space.decode(x0_hat)


def plot_reverse_strip(path: ReversePath, columns: int = 8) -> Figure:
    """Rows x_t, x̂₀ and ε̂ at ``columns`` steps spread over the reverse process, then the sample."""
    k = len(path.sigmas)
    shown = sorted(set(np.linspace(0, k - 1, columns).round().astype(int).tolist()))
    fig = Figure(figsize=(1.35 * (len(shown) + 1), 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(3, len(shown) + 1)
    rows = (("x_t: input", path.x, (-1, 1)), ("x̂₀: image estimate", path.x0_hat, (-1, 1)),
            ("ε̂: noise estimate", path.eps_hat, (-3, 3)))
    for r, (label, images, (lo, hi)) in enumerate(rows):
        for c, i in enumerate(shown):
            _show(axes[r, c], images[i], lo, hi)
            if r == 0:
                axes[r, c].set_title(f"step {i + 1}/{k}\nσ = {path.sigmas[i]:.3g}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
        _show(axes[r, -1], path.final if r < 2 else torch.zeros_like(path.final), -1, 1)
    axes[0, -1].set_title("sample", fontsize=8)
    return fig


def _show(ax, img: Tensor, lo: float = -1.0, hi: float = 1.0, cmap: str = "gray") -> None:
    a = img.float().permute(1, 2, 0).numpy()
    a = np.clip((a - lo) / (hi - lo), 0, 1)
    ax.imshow(a[..., 0] if a.shape[2] == 1 else a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- the network's shape
@dataclass
class Stage:
    name: str
    shape: tuple[int, ...]  # (C, H, W)
    part: str               # "in", "down", "mid", "up", "out"


def unet_stages(net: nn.Module, image_shape: tuple[int, int, int]) -> list[Stage]:
    """Feature-map shapes through a U-Net, read from the model by forward hooks on one dummy input."""
    # the U-Net runs its blocks (ModuleLists) itself: hook the last layer of each, whose output leaves it
    parts = [("in", [net.inp]), ("down", [b[-1] for b in net.down]), ("mid", [net.mid[-1]]),
             ("up", [b[-1] for b in net.up])]
    stages: list[Stage] = []
    handles = []
    for part, modules in parts:
        for j, m in enumerate(modules):
            name = f"{part} {j}" if len(modules) > 1 else part
            handles.append(m.register_forward_hook(_recorder(stages, name, part)))
    handles.append(net.out.register_forward_hook(_recorder(stages, "out", "out")))
    try:
        with torch.no_grad():
            x = torch.zeros(1, *image_shape)
            cond = torch.zeros(1, dtype=torch.long) if getattr(net, "num_classes", 0) else None
            net(x, torch.zeros(1), cond)
    finally:
        for h in handles:
            h.remove()
    return stages


def _recorder(stages: list[Stage], name: str, part: str):
    def hook(module, inputs, output):
        stages.append(Stage(name, tuple(output.shape[1:]), part))
    return hook


def plot_unet(stages: list[Stage], params: int) -> Figure:
    """Boxes left to right in data-flow order, sunk by resolution (the U), with skip arrows across."""
    fig = Figure(figsize=(max(8.0, 0.62 * len(stages) + 2), 3.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    sizes = sorted({s.shape[-1] for s in stages}, reverse=True)
    max_c = max(s.shape[0] for s in stages)
    colours = {"in": "#888", "down": "#2b6cb0", "mid": "#6b46c1", "up": "#c05621", "out": "#888"}
    centres = []
    for i, s in enumerate(stages):
        level = sizes.index(s.shape[-1])
        h = 0.35 + 0.65 * s.shape[-1] / sizes[0]
        w = 0.25 + 0.45 * s.shape[0] / max_c
        y = -level * 1.25
        ax.add_patch(Rectangle((i - w / 2, y - h / 2), w, h, facecolor=colours[s.part], alpha=0.75))
        ax.text(i, y - h / 2 - 0.08, f"{s.shape[0]}×{s.shape[1]}×{s.shape[2]}", ha="center", va="top",
                fontsize=7, rotation=90)
        centres.append((i, y + h / 2))
    downs = [i for i, s in enumerate(stages) if s.part in ("in", "down")]
    ups = [i for i, s in enumerate(stages) if s.part == "up"]
    for a, b in zip(downs, reversed(ups), strict=False):  # each up block concatenates one skip
        (xa, ya), (xb, _) = centres[a], centres[b]
        ax.add_patch(FancyArrowPatch((xa, ya + 0.05), (xb, ya + 0.05), connectionstyle="arc3,rad=-0.12",
                                     arrowstyle="-|>", mutation_scale=7, color="#999", lw=0.7))
    ax.set_xlim(-1, len(stages))
    ax.set_ylim(-1.25 * (len(sizes) - 1) - 1.6, 1.4)
    ax.axis("off")
    ax.set_title(f"The model's U-Net, {params / 1e6:.2f} M parameters: feature maps (channels × height × width) "
                 "in order; blue down, purple middle, orange up; grey arrows: skip connections", fontsize=9.5)
    return fig


# --------------------------------------------------------------------------- new images
def training_images(model: LoadedModel) -> tuple[Tensor, Tensor]:
    """The model's training images in [-1, 1] and their labels, loaded as its config says (raises if the
    data are not on this machine)."""
    data = getattr(load_training_data(model.config), "data", None)
    if data is None:
        raise UndiffuseError("the model was not trained on images")
    return data.images.float() / 127.5 - 1, data.labels


@dataclass
class NewImages:
    samples: Tensor           # (n, C, H, W)
    neighbours: Tensor        # (n, C, H, W): each sample's nearest training image
    distances: Tensor         # (n,)
    train_spread: float       # median distance between a training image and its nearest other training image
    seeds: list[int]


def new_images(model: LoadedModel, train: Tensor, seeds: list[int], label: int | None) -> NewImages:
    """One sample per seed (same class) and its nearest training image in pixel space. The seeds are consecutive:
    one batch draws them (sample i of a request is seeded seed + i, as one at a time would be)."""
    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"new_images draws consecutive seeds in one batch, not {seeds}")
    samples, _ = generate(model, request(model, n=len(seeds), seed=seeds[0], label=label), progress=False)
    dist, idx = nearest_neighbours(samples, train)
    probe = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:200]]
    d_train, _ = nearest_neighbours(probe, train, k=2)  # k = 1 is the image itself, at distance 0
    return NewImages(samples, train[idx[:, 0]], dist[:, 0], float(d_train[:, 1].median()), seeds)


# --------------------------------------------------------------------------- samplers
@dataclass
class SamplerRun:
    sampler: str
    steps: int
    grid: str
    seconds: float
    image: Tensor


def compare_samplers(model: LoadedModel, seed: int, label: int | None, step_counts: tuple[int, ...]
                     ) -> list[SamplerRun]:
    """The same seed through DDPM (stochastic), DDIM (deterministic) and DPM-Solver++(2M) at each count."""
    plan = [("ddpm", "trailing"), ("ddim", "trailing"), ("dpmpp_2m", "karras")]
    runs = []
    for sampler, grid in plan:
        for steps in step_counts:
            req = request(model, n=1, seed=seed, label=label, sampler=sampler, steps=steps, grid=grid)
            t0 = time.perf_counter()
            img, _ = generate(model, req, progress=False)
            runs.append(SamplerRun(sampler, steps, grid, time.perf_counter() - t0, img[0]))
    return runs


def plot_samplers(runs: list[SamplerRun]) -> Figure:
    samplers = list(dict.fromkeys(r.sampler for r in runs))
    counts = list(dict.fromkeys(r.steps for r in runs))
    fig = Figure(figsize=(1.5 * len(counts) + 1.2, 1.75 * len(samplers) + 0.3), dpi=100, layout="constrained")
    axes = fig.subplots(len(samplers), len(counts), squeeze=False)
    for r in runs:
        ax = axes[samplers.index(r.sampler), counts.index(r.steps)]
        _show(ax, r.image, -1, 1)
        ax.set_title(f"{r.steps} steps, {r.seconds:.2f} s", fontsize=8)
        if counts.index(r.steps) == 0:
            ax.set_ylabel(r.sampler, fontsize=9)
    return fig


# --------------------------------------------------------------------------- guidance
def guidance_grid(model: LoadedModel, seed: int, classes: int, scales: tuple[float, ...]) -> Tensor:
    """(classes, len(scales), C, H, W): classes 0…classes−1, row i seeded seed + i, at each guidance scale (one
    batch per scale: a request without a label draws the classes in turn). Plain classifier-free guidance at every
    σ, whatever interval or projection the card samples with, so that each column is exactly
    D(∅) + w (D(class) − D(∅))."""
    cols = [generate(model, request(model, n=classes, seed=seed, label=None, guidance=w,
                                    guidance_interval=(0.0, math.inf), guidance_parallel=1.0), progress=False)[0]
            for w in scales]
    return torch.stack(cols, dim=1)


def card_guidance_words(model: LoadedModel) -> str:
    """A sentence on how the model card guides, which the reverse path and the other pictures follow."""
    s = model.config.sample
    parts = [f"w = {s.guidance:g}"]
    if s.guidance_interval:
        lo, hi = s.guidance_interval
        parts.append(f"only while σ is in [{lo:g}, {hi:g}] (the guidance interval, Kynkäänniemi et al. 2024: one "
                     "evaluation per step outside it)")
    if s.guidance_parallel != 1.0:
        parts.append(f"with the part of D(class) - D(∅) along D(class) weighed by {s.guidance_parallel:g} "
                     "(adaptive projected guidance, Sadat et al. 2024: that part mostly over-saturates)")
    if s.eps_scale != 1.0:
        parts.append(f"and ε̂ divided by {s.eps_scale:g} (ε scaling, Ning et al. 2024)")
    return ("The grid of scales guides at every step; the other pictures on this page are drawn as the model card "
            "samples: " + ", ".join(parts) + ".")


def plot_guidance(grid: Tensor, names: list[str], scales: tuple[float, ...]) -> Figure:
    fig = Figure(figsize=(1.4 * len(scales) + 1.2, 1.5 * len(names) + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(len(names), len(scales), squeeze=False)
    for r, name in enumerate(names):
        for c, w in enumerate(scales):
            _show(axes[r, c], grid[r, c], -1, 1)
            if r == 0:
                axes[r, c].set_title(f"w = {w:g}", fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    return fig
