"""Per pixel, not splats: one forward step's noise ε = (x_t − √(1−β_t) x_{t−1})/√β_t (Ho et al. 2020, eq. 2) at
the image's true resolution, its autocorrelation (independent pixels: 0 at every lag ≠ 0), a splat noise (white
noise averaged over k×k boxes, whose neighbours share k(k−1) of k² draws: correlation (k−1)/k) for contrast,
and a count of the pixels each step of the chain changes (all of them, at every step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..images import make_grid, save_png
from ..plots import save_figure
from ..process import DiscreteSchedule
from .page import Picture, Section

LAGS = 3      # the autocorrelation map spans lags −LAGS…LAGS in each direction
SPLAT = 3     # the splat's box size k


def autocorrelation(noise: Tensor, lags: int = LAGS) -> Tensor:
    """(2·lags+1, 2·lags+1) correlation of (N, C, H, W) values with their neighbours at each (dy, dx) offset,
    over all images, channels and positions where both lie inside the image."""
    x = (noise.double() - noise.double().mean()) / noise.double().std()
    h, w = x.shape[-2:]
    out = torch.zeros(2 * lags + 1, 2 * lags + 1, dtype=torch.float64)
    for dy in range(-lags, lags + 1):
        for dx in range(-lags, lags + 1):
            a = x[..., max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
            b = x[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[dy + lags, dx + lags] = (a * b).mean()
    return out


def splat_noise(shape: tuple[int, ...], k: int = SPLAT, generator: torch.Generator | None = None) -> Tensor:
    """Unit-variance noise made of k×k splats: white noise averaged over a k×k box around each pixel."""
    n, c, h, w = shape
    white = torch.randn(n * c, 1, h + k - 1, w + k - 1, generator=generator, dtype=torch.float64)
    box = torch.nn.functional.avg_pool2d(white, k, stride=1)   # (n·c, 1, h, w), variance 1/k²
    return (box * k).reshape(n, c, h, w)


@dataclass
class PixelNoise:
    """One step of the forward chain on an image, pixel by pixel, and what the whole chain touches."""

    t: int                        # the step shown (1-based)
    before: Tensor                # x_{t-1} (C, H, W)
    after: Tensor                 # x_t
    eps: Tensor                   # that step's noise, recovered from the two
    splat: Tensor                 # a splat noise of the same shape
    eps_acf: Tensor               # autocorrelation maps over all T steps' noise
    splat_acf: Tensor
    changed: Tensor               # (T,) pixels (values) each step changed
    numbers: dict


def per_pixel(x0: Tensor, schedule: DiscreteSchedule | None = None, t: int = 100, seed: int = 0,
              max_values: int = 2_000_000) -> PixelNoise:
    """Run the chain x_t = √(1−β_t) x_{t−1} + √β_t ε on ``x0`` (C, H, W) for all T steps; recover each step's
    noise from x_{t−1} and x_t, keep step ``t``, count the values each step changed, and measure the
    autocorrelation of the steps' noise (every step's, or evenly spaced steps' up to ``max_values`` values)
    against that of as many splat draws."""
    schedule = schedule or DiscreteSchedule.from_name("linear")
    g = torch.Generator().manual_seed(seed)
    stride = max(1, -(-schedule.T * x0.numel() // max_values))
    x, eps_all, changed = x0.double()[None], [], []
    for k in range(schedule.T):
        prev = x
        x = schedule.q_step(prev, k, torch.randn(prev.shape, generator=g, dtype=torch.float64))
        beta = float(schedule.betas[k])
        eps = (x - (1 - beta) ** 0.5 * prev) / beta ** 0.5
        if k % stride == 0:
            eps_all.append(eps)
        changed.append(int((x != prev).sum()))
        if k + 1 == t:
            before, after, eps_t = prev[0], x[0], eps[0]
    noise = torch.cat(eps_all)                                        # (T, C, H, W)
    splat = splat_noise(tuple(noise.shape), generator=g)
    eps_acf, splat_acf = autocorrelation(noise), autocorrelation(splat)
    c = LAGS
    off_centre = eps_acf.clone()
    off_centre[c, c] = 0.0
    numbers = {"t": t, "pixels": x0.numel(), "steps": schedule.T, "noise_steps": len(eps_all), "values": noise.numel(),
               "changed_min": min(changed), "changed_max": max(changed), "changed_total": sum(changed),
               "neighbour_correlation": float(eps_acf[c, c + 1]), "vertical_correlation": float(eps_acf[c + 1, c]),
               "max_off_centre": float(off_centre.abs().max()),
               "splat_k": SPLAT, "splat_neighbour_correlation": float(splat_acf[c, c + 1]),
               "splat_expected": (SPLAT - 1) / SPLAT, "eps_std": float(noise.std()),
               "splat_std": float(splat.std())}
    return PixelNoise(t, before.float(), after.float(), eps_t.float(), splat[t - 1].float(), eps_acf.float(),
                      splat_acf.float(), torch.tensor(changed), numbers)


def plot_acf(res: PixelNoise) -> Figure:
    """The two autocorrelation maps side by side, each cell labelled with its value."""
    fig = Figure(figsize=(9, 4.3), dpi=100, layout="constrained")
    ticks = np.arange(-LAGS, LAGS + 1)
    for ax, acf, title in zip(fig.subplots(1, 2), (res.eps_acf, res.splat_acf),
                              ("the diffusion noise: per pixel", f"splat noise ({SPLAT}×{SPLAT} boxes)"), strict=True):
        ax.imshow(acf.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, extent=(-LAGS - .5, LAGS + .5, LAGS + .5, -LAGS - .5))
        for i, dy in enumerate(ticks):
            for j, dx in enumerate(ticks):
                ax.text(dx, dy, f"{float(acf[i, j]):.2f}", ha="center", va="center", fontsize=6.5)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel("horizontal offset (pixels)")
        ax.set_ylabel("vertical offset")
        ax.set_title(f"{title}:\ncorrelation with the pixel at each offset", fontsize=9)
    return fig


def plot_changed(res: PixelNoise) -> Figure:
    """Values changed per step of the chain, against the number of values in the image."""
    fig = Figure(figsize=(7, 2.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(1, len(res.changed) + 1)
    ax.plot(steps, res.changed.numpy(), color="#2b6cb0", label="values changed by step t")
    ax.axhline(res.numbers["pixels"], color="#d62728", ls="--", lw=1,
               label=f"values in the image: {res.numbers['pixels']}")
    ax.set_ylim(0, res.numbers["pixels"] * 1.15)
    ax.set_xlabel("step t")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def pixel_strip(res: PixelNoise) -> Tensor:
    """(4, C, H, W) for a pixel-exact strip: x_{t−1}, x_t, the step's noise and the splat noise (noise shown /3)."""
    return torch.stack([res.before.clamp(-1, 1), res.after.clamp(-1, 1), (res.eps / 3).clamp(-1, 1),
                        (res.splat / 3).clamp(-1, 1)])


def pixels_section(image: Tensor, note: str, out: Path, params: dict, numbers: dict, seed: int) -> Section:
    """The section: the step at true resolution, both autocorrelation maps, and the count of changed pixels."""
    res = per_pixel(image, t=100, seed=seed)
    n = numbers["per_pixel"] = res.numbers
    c, h, w = image.shape
    save_png(out / "pixels.png", make_grid(pixel_strip(res), nrow=4), {**params, "t": res.t}, scale=1)
    save_png(out / "pixels-large.png", make_grid(pixel_strip(res), nrow=4), {**params, "t": res.t},
             scale=max(1, 96 // w))
    save_figure(plot_acf(res), out / "pixels-acf.png", params)
    save_figure(plot_changed(res), out / "pixels-changed.png", params)
    return Section("per-pixel", "Every pixel, its own noise, at every step", [
        f"Is the noise one value per pixel, or a splat spread over several? Is every pixel noised at each step, "
        f"or a random subset? Both can be read off {note}: {w}×{h} pixels ({c} channel{'s' * (c > 1)}). Below, "
        f"at its true resolution (one screen pixel per image pixel) and enlarged: x<sub>t-1</sub> and x<sub>t</sub> "
        f"at step t = {res.t} of the linear chain, and the noise ε = (x<sub>t</sub> - √(1-β<sub>t</sub>) "
        "x<sub>t-1</sub>)/√β<sub>t</sub> recovered from the two: one independent N(0, 1) number per pixel and "
        "channel, nothing spread out. The fourth picture is what splats would look like: the same white noise "
        f"averaged over {SPLAT}×{SPLAT} boxes (and scaled back to variance 1), blobs a few pixels wide.",
        f"The autocorrelation says it with numbers. Over the noise of {n['noise_steps']:,} of the {n['steps']:,} "
        f"steps ({n['values']:,} values) "
        f"the correlation of a pixel with its right neighbour is {n['neighbour_correlation']:+.4f}, with the one "
        f"below {n['vertical_correlation']:+.4f}, and no offset within ±{LAGS} pixels exceeds "
        f"{n['max_off_centre']:.4f} in size: independent pixels (the statistical noise of so many values is about "
        f"{1 / n['values'] ** 0.5:.4f}). The splat noise has neighbour correlation "
        f"{n['splat_neighbour_correlation']:.3f}, as theory says for {SPLAT}×{SPLAT} boxes: neighbours share "
        f"{SPLAT * (SPLAT - 1)} of {SPLAT * SPLAT} draws, ({SPLAT}-1)/{SPLAT} = {n['splat_expected']:.3f}.",
        f"Counting the values each step changes: between {n['changed_min']:,} and {n['changed_max']:,} of "
        f"{n['pixels']:,}, {n['changed_total']:,} changes in {n['steps']:,} steps. Every pixel is noised at "
        "every step: a Gaussian draw is never exactly zero, and each step also shrinks every pixel by "
        "√(1-β<sub>t</sub>). What is random is how much, not which pixels."],
        [Picture("pixels.png", "True resolution: x_{t-1}, x_t, the step's noise ε, a splat noise.", pixels=True),
         Picture("pixels-large.png", "The same, enlarged without smoothing.", pixels=True),
         Picture("pixels-acf.png", "Correlation with the neighbour at each offset: 1 at the centre (a pixel "
                 "with itself), ≈ 0 elsewhere for the diffusion noise; a broad bump for the splats."),
         Picture("pixels-changed.png", "Values changed by each step of the chain: all of them, every step.")],
        level=3)
