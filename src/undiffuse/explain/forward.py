"""The forward process shown on real data: the Markov chain against its closed form, the schedules,
and the two-pixel image whose noise is a random walk in the plane (Ho et al. 2020, eq. 2 and 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from ..process import DiscreteSchedule

SCHEDULES = ("linear", "cosine")


def schedule_curves(T: int = 1000) -> dict[str, dict[str, np.ndarray]]:
    """β_t, ᾱ_t and log SNR_t = ln(ᾱ/(1-ᾱ)) of the linear and cosine schedules."""
    out = {}
    for name in SCHEDULES:
        s = DiscreteSchedule.from_name(name, T)
        ab = s.alpha_bars
        out[name] = {"beta": s.betas.numpy(), "alpha_bar": ab.numpy(), "log_snr": (ab / (1 - ab)).log().numpy()}
    return out


def plot_schedules(T: int = 1000) -> Figure:
    """Three panels: β_t, ᾱ_t and log SNR over t for both schedules."""
    curves = schedule_curves(T)
    fig = Figure(figsize=(11, 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    t = np.arange(1, T + 1)
    for ax, key, title in zip(axes, ("beta", "alpha_bar", "log_snr"),
                              ("β_t: noise added at step t", "ᾱ_t: how much of x₀ survives to t",
                               "log SNR_t = ln ᾱ_t / (1-ᾱ_t)"), strict=True):
        for name, colour in zip(SCHEDULES, ("#1f77b4", "#d62728"), strict=True):
            ax.plot(t, curves[name][key], color=colour, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step t")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    return fig


@dataclass
class ChainResult:
    """x_t at ``ts`` reached by t chained steps and drawn in one shot; per-pixel residual variances."""

    ts: list[int]
    chained: Tensor           # (len(ts), C, H, W)
    closed: Tensor            # (len(ts), C, H, W)
    frames: Tensor            # (F, C, H, W): the chain every ``frame_every`` steps, for the animation
    frame_ts: list[int]
    rows: list[dict[str, float]]  # per t: ᾱ, 1-ᾱ, var of x_t - √ᾱ x₀ for the chain and the closed form


def chain_vs_closed_form(x0: Tensor, schedule: DiscreteSchedule, ts: list[int], seed: int = 0,
                         frame_every: int = 10, min_values: int = 20_000) -> ChainResult:
    """Run the chain x_t = √(1-β_t) x_{t-1} + √β_t ε for T steps from ``x0`` (C, H, W) and, at each t in
    ``ts``, also draw x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε in one shot. Both leave x_t - √ᾱ_t x₀ with variance 1-ᾱ_t,
    measured over the pixels of enough independent copies to hold ``min_values`` values."""
    g = torch.Generator().manual_seed(seed)
    copies = max(1, -(-min_values // x0.numel()))  # enough independent copies for a precise variance
    x0 = x0.double().expand(copies, *x0.shape)
    x, chained, closed, rows, frames, frame_ts = x0.clone(), [], [], [], [x0[0].clone()], [0]
    wanted = set(ts)
    for step in range(1, schedule.T + 1):  # step k applies β_{k-1}: after it ᾱ = alpha_bars[k-1]
        x = schedule.q_step(x, step - 1, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if step % frame_every == 0:
            frames.append(x[0].clone())
            frame_ts.append(step)
        if step in wanted:
            ab = float(schedule.alpha_bars[step - 1])
            one_shot = schedule.q_sample(x0, step - 1, torch.randn(x.shape, generator=g, dtype=torch.float64))
            chained.append(x[0].clone())
            closed.append(one_shot[0])
            rows.append({"t": step, "alpha_bar": ab, "expected_var": 1 - ab,
                         "chain_var": float((x - ab ** 0.5 * x0).var()),
                         "closed_var": float((one_shot - ab ** 0.5 * x0).var()), "values": x.numel()})
    x0 = x0[0]
    if 0 in wanted:
        chained.insert(0, x0)
        closed.insert(0, x0)
        rows.insert(0, {"t": 0, "alpha_bar": 1.0, "expected_var": 0.0, "chain_var": 0.0, "closed_var": 0.0,
                        "values": x.numel()})
    return ChainResult(sorted(wanted), torch.stack(chained).float(), torch.stack(closed).float(),
                       torch.stack(frames).float(), frame_ts, rows)


@dataclass
class TwoPixelResult:
    """Many independent chains started from the same two-pixel image."""

    start: Tensor            # (2,) in [-1, 1]
    pixels: tuple[int, int]  # the 0–255 values
    walk: Tensor             # (T + 1, 2): one chain, every step
    clouds: dict[int, Tensor]  # t → (n, 2): all chains at t
    rows: list[dict[str, float]]  # per t: 1-ᾱ_t against the chains' variance, √ᾱ_t x₀ against their mean


def two_pixel_walks(pixels: tuple[int, int] = (120, 90), schedule: DiscreteSchedule | None = None,
                    n: int = 4000, ts: tuple[int, ...] = (10, 50, 100, 250, 500, 1000), seed: int = 0
                    ) -> TwoPixelResult:
    """Run n chains of the two-pixel image (a point in the plane) for T steps; keep one whole walk and
    the cloud of all n at each t in ``ts``."""
    schedule = schedule or DiscreteSchedule.from_name("linear")
    g = torch.Generator().manual_seed(seed)
    start = torch.tensor(pixels, dtype=torch.float64) / 127.5 - 1
    x = start.expand(n, 2).clone()
    walk, clouds, rows = [start.clone()], {}, []
    for step in range(1, schedule.T + 1):
        x = schedule.q_step(x, step - 1, torch.randn(x.shape, generator=g, dtype=torch.float64))
        walk.append(x[0].clone())
        if step in ts:
            ab = float(schedule.alpha_bars[step - 1])
            clouds[step] = x.float().clone()
            rows.append({"t": step, "expected_var": 1 - ab, "var": float(x.var(0).mean()),
                         "expected_mean": (ab ** 0.5 * start).tolist(), "mean": x.mean(0).tolist()})
    return TwoPixelResult(start.float(), pixels, torch.stack(walk).float(), clouds, rows)


def plot_two_pixels(res: TwoPixelResult, schedule: DiscreteSchedule | None = None) -> Figure:
    """Left: one step's Gaussian around a point, with draws. Middle: one chain's random walk.
    Right: all chains at several t, spreading towards N(0, I) (1σ and 2σ circles of the closed form)."""
    schedule = schedule or DiscreteSchedule.from_name("linear")
    fig = Figure(figsize=(14, 4.6), dpi=100, layout="constrained")
    ax_step, ax_walk, ax_cloud = fig.subplots(1, 3)
    start = res.start.numpy()

    # one step from the start: N(√(1-β) x, β I) with a β large enough to see (step 500 of the chain)
    k = schedule.T // 2
    beta = float(schedule.betas[k])
    centre = (1 - beta) ** 0.5 * start
    grid = np.linspace(-3, 3, 121)
    gx, gy = np.meshgrid(centre[0] + grid * beta ** 0.5, centre[1] + grid * beta ** 0.5)
    density = np.exp(-((gx - centre[0]) ** 2 + (gy - centre[1]) ** 2) / (2 * beta)) / (2 * np.pi * beta)
    ax_step.contour(gx, gy, density, levels=6, cmap="Blues")
    draws = centre + beta ** 0.5 * np.random.default_rng(0).standard_normal((150, 2))
    ax_step.scatter(draws[:, 0], draws[:, 1], s=5, color="#1f77b4", alpha=0.6, label="draws of the next point")
    ax_step.scatter(*start, color="black", s=30, zorder=3, label="current point")
    ax_step.scatter(*centre, color="#d62728", marker="x", s=40, zorder=3, label="√(1-β) · current")
    ax_step.set_title(f"one step (β = {beta:.4f}): a Gaussian around\nthe shrunk point; each pixel its own noise",
                      fontsize=10)
    ax_step.set_aspect("equal")
    ax_step.legend(fontsize=7.5, loc="lower right")

    walk = res.walk.numpy()
    t = np.arange(len(walk))
    ax_walk.scatter(walk[:, 0], walk[:, 1], c=t, cmap="viridis", s=3)
    ax_walk.plot(walk[:, 0], walk[:, 1], color="#888", lw=0.4, alpha=0.6)
    ax_walk.scatter(*start, color="black", s=30, zorder=3)
    ax_walk.annotate(f"x₀ = pixels {res.pixels}", start, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax_walk.set_title(f"one chain, {len(walk) - 1} steps: a random walk\ndrifting to N(0, I) (colour: step)",
                      fontsize=10)
    ax_walk.set_aspect("equal")
    ax_walk.set_xlim(-3, 3)
    ax_walk.set_ylim(-3, 3)

    colours = colormaps["viridis"](np.linspace(0, 0.95, len(res.clouds)))
    theta = np.linspace(0, 2 * np.pi, 100)
    for (step, cloud), colour in zip(res.clouds.items(), colours, strict=True):
        ab = float(schedule.alpha_bars[step - 1])
        ax_cloud.scatter(cloud[:400, 0], cloud[:400, 1], s=3, color=colour, alpha=0.5, label=f"t = {step}")
        c = ab ** 0.5 * start
        for r in (1, 2):
            rad = r * (1 - ab) ** 0.5
            ax_cloud.plot(c[0] + rad * np.cos(theta), c[1] + rad * np.sin(theta), color=colour, lw=0.8)
    ax_cloud.set_title(f"{len(next(iter(res.clouds.values())))} chains at several t, with the 1σ and 2σ\n"
                       "circles of q(x_t | x₀) = N(√ᾱ_t x₀, (1-ᾱ_t) I)", fontsize=10)
    ax_cloud.set_aspect("equal")
    ax_cloud.set_xlim(-3.2, 3.2)
    ax_cloud.set_ylim(-3.2, 3.2)
    ax_cloud.legend(fontsize=7.5, loc="lower right", markerscale=3)
    for ax in (ax_step, ax_walk, ax_cloud):
        ax.set_xlabel("pixel 1 (scaled to [-1, 1])")
        ax.set_ylabel("pixel 2")
        ax.grid(alpha=0.25)
    return fig


def plot_noise(size: int = 64, seed: int = 0) -> tuple[Figure, dict[str, float]]:
    """A noise image ε ~ N(0, I) and its histogram against the standard normal density, with its
    mean, standard deviation and the correlation of horizontally neighbouring pixels (≈ 0: independent)."""
    eps = torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b = eps[:, :-1].flatten(), eps[:, 1:].flatten()
    stats = {"mean": float(eps.mean()), "std": float(eps.std()), "n": size * size,
             "neighbour_correlation": float(torch.corrcoef(torch.stack([a, b]))[0, 1])}
    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    ax_img, ax_hist = fig.subplots(1, 2, width_ratios=[1, 1.6])
    ax_img.imshow(eps.numpy(), cmap="gray", vmin=-3, vmax=3, interpolation="nearest")
    ax_img.set_title(f"ε: {size}×{size} independent N(0, 1) pixels", fontsize=10)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_hist.hist(eps.flatten().numpy(), bins=60, density=True, color="#9ecae1", label="pixels of ε")
    z = np.linspace(-4, 4, 200)
    ax_hist.plot(z, np.exp(-z ** 2 / 2) / np.sqrt(2 * np.pi), color="#d62728", label="N(0, 1) density")
    ax_hist.set_title(f"mean {stats['mean']:+.3f}, std {stats['std']:.3f}, "
                      f"neighbour correlation {stats['neighbour_correlation']:+.3f}", fontsize=10)
    ax_hist.legend(fontsize=8)
    return fig, stats
