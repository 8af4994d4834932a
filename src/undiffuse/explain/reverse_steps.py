"""The reverse process step by step, for DDPM and DDIM side by side. Both write the step t → t−1 as

    x_{t−1} = √ᾱ_{t−1} x̂₀  +  √(1 − ᾱ_{t−1} − s²) ε̂  +  s z,     z ~ N(0, I)
              (denoise)      (re-noise with the noise it saw)  (fresh noise)

with s² = β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}) for DDPM (Ho et al. 2020, eq. 6–7; Song et al. 2021, eq. 12
with η = 1) and s = 0 for DDIM (η = 0). The parts are computed from the real samplers' recorded states."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..models import LoadedModel
from ..plots import save_figure
from ..sampling import generate
from .page import Section, Slider
from .reverse import _show, request

SAMPLERS = ("ddpm", "ddim")
PARTS = ("x_t", "x̂₀", "ε̂", "a·x̂₀", "b·ε̂", "s·z", "x_{t−1}")


@dataclass
class StepParts:
    """One sampler's reverse process, per step (VP scale, the model's space): the state, the network's
    estimates, the coefficients of the update and its three parts."""

    sampler: str
    sigmas: list[float]             # σ of each step, then 0
    x: Tensor                       # (K+1, C, H, W): x_t at each step and the result
    x0_hat: Tensor                  # (K, …)
    eps_hat: Tensor                 # (K, …)
    coeffs: list[dict[str, float]]  # per step: ᾱ_t, ᾱ_{t−1}, a, b, s
    denoise: Tensor                 # (K, …) a·x̂₀
    renoise: Tensor                 # (K, …) b·ε̂
    fresh: Tensor                   # (K, …) s·z, z recovered from the recorded next state (0 for DDIM)


def coefficients(sigma: float, sigma_next: float, stochastic: bool) -> dict[str, float]:
    """a, b and s of the step σ → σ_next (ᾱ = 1/(1+σ²)); s² is the DDPM posterior variance β̃ or 0."""
    ab, ab_prev = 1 / (1 + sigma ** 2), 1 / (1 + sigma_next ** 2)
    s2 = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev) if stochastic and sigma_next > 0 else 0.0
    return {"sigma": sigma, "alpha_bar": ab, "alpha_bar_prev": ab_prev, "a": math.sqrt(ab_prev),
            "b": math.sqrt(max(1 - ab_prev - s2, 0.0)), "s": math.sqrt(s2)}


def step_parts(model: LoadedModel, sampler: str, seed: int, label: int | None, steps: int = 20) -> StepParts:
    """Sample one image with ``sampler`` (ddpm or ddim) on the trailing grid, record every state and estimate,
    and split each step's update into its parts; the fresh noise z is what the sampler drew, recovered as
    (x_{t−1} − a x̂₀ − b ε̂)/s."""
    rec: dict[str, list] = {"sigma": [], "x": [], "x0": []}

    def record(i: int, sigma, x: Tensor, x0_hat: Tensor) -> None:
        rec["sigma"].append(float(torch.as_tensor(sigma).flatten()[0]))
        rec["x"].append(x[0])
        rec["x0"].append(x0_hat[0])

    req = request(model, n=1, seed=seed, label=label, sampler=sampler, steps=steps, grid="trailing")
    with torch.no_grad():
        generate(model, req, progress=False, callback=record)
    sig = rec["sigma"] + [0.0]
    x_sigma, x0_hat = torch.stack(rec["x"]).double(), torch.stack(rec["x0"]).double()
    eps_hat = (x_sigma - x0_hat) / torch.tensor(rec["sigma"], dtype=torch.float64).reshape(-1, 1, 1, 1)
    scale = torch.tensor([1 / math.sqrt(1 + s * s) for s in sig], dtype=torch.float64).reshape(-1, 1, 1, 1)
    # the last step lands on x̂₀; the states in between are the next steps' inputs (VP scale: x/√(1+σ²))
    x = torch.cat([x_sigma, x0_hat[-1:]]) * scale
    coeffs = [coefficients(s, s_next, sampler == "ddpm") for s, s_next in zip(sig[:-1], sig[1:], strict=True)]
    a = torch.tensor([c["a"] for c in coeffs], dtype=torch.float64).reshape(-1, 1, 1, 1)
    b = torch.tensor([c["b"] for c in coeffs], dtype=torch.float64).reshape(-1, 1, 1, 1)
    denoise, renoise = a * x0_hat, b * eps_hat
    fresh = x[1:] - denoise - renoise   # s·z: what the sampler added beyond the deterministic parts
    return StepParts(sampler, sig, x.float(), x0_hat.float(), eps_hat.float(), coeffs, denoise.float(),
                     renoise.float(), fresh.float())


def fresh_noise_stats(parts: StepParts) -> dict[str, float]:
    """The recovered z = fresh/s over the steps with s > 0: mean and std (≈ 0 and 1 for a true N(0, I) draw)."""
    zs = [parts.fresh[i] / c["s"] for i, c in enumerate(parts.coeffs) if c["s"] > 0]
    if not zs:
        return {"steps": 0, "mean": 0.0, "std": 0.0, "max_abs_fresh": float(parts.fresh.abs().max())}
    z = torch.stack(zs).double()
    return {"steps": len(zs), "mean": float(z.mean()), "std": float(z.std()),
            "max_abs_fresh": float(parts.fresh.abs().max())}


def panels(parts: StepParts, i: int, channels: int) -> list[tuple[Tensor, tuple[float, float]]]:
    """Step i's seven pictures (first ``channels`` channels), each with its display range."""
    view = [parts.x[i], parts.x0_hat[i], parts.eps_hat[i], parts.denoise[i], parts.renoise[i], parts.fresh[i],
            parts.x[i + 1]]
    ranges = [(-1, 1), (-1, 1), (-3, 3), (-1, 1), (-1, 1), (-1, 1), (-1, 1)]
    return [(v[:channels], r) for v, r in zip(view, ranges, strict=True)]


def plot_step(pair: list[StepParts], i: int, channels: int) -> Figure:
    """One step of each sampler as a row: x_t, x̂₀, ε̂, then x_{t−1} = a·x̂₀ + b·ε̂ + s·z, with the coefficients."""
    fig = Figure(figsize=(10.5, 1.75 * len(pair) + 0.3), dpi=80, layout="constrained")
    axes = fig.subplots(len(pair), len(PARTS), squeeze=False)
    for r, parts in enumerate(pair):
        c = parts.coeffs[i]
        names = [f"x_t (σ = {c['sigma']:.3g})", "x̂₀", "ε̂", f"a·x̂₀, a = {c['a']:.3f}", f"+ b·ε̂, b = {c['b']:.3f}",
                 f"+ s·z, s = {c['s']:.3f}", "= x_{t−1}"]
        for k, ((img, (lo, hi)), name) in enumerate(zip(panels(parts, i, channels), names, strict=True)):
            _show(axes[r, k], img, lo, hi)
            axes[r, k].set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(parts.sampler.upper(), fontsize=10)
    return fig


def table(pair: list[StepParts], shown: list[int]) -> tuple[list[str], list[list[str]]]:
    """Per shown step: σ, ᾱ_t → ᾱ_{t−1}, and each sampler's a, b, s (b² + s² = 1 − ᾱ_{t−1})."""
    header = ["step", "σ", "ᾱ_t", "ᾱ_{t−1}"] + [f"{p.sampler.upper()}: {k}" for p in pair for k in ("a", "b", "s")]
    rows = []
    for i in shown:
        c = pair[0].coeffs[i]
        rows.append([str(i + 1), f"{c['sigma']:.3g}", f"{c['alpha_bar']:.4f}", f"{c['alpha_bar_prev']:.4f}"]
                    + [f"{p.coeffs[i][k]:.4f}" for p in pair for k in ("a", "b", "s")])
    return header, rows


def reverse_steps_section(model: LoadedModel, out: Path, params: dict, numbers: dict, seed: int,
                          label: int | None, steps: int = 20) -> Section:
    """The section: a slider over every step of both samplers from the same noise, a table of the coefficients."""
    pair = [step_parts(model, s, seed, label, steps) for s in SAMPLERS]
    channels = model.space.image_channels if model.space.kind == "latent" else model.space.shape[0]
    frames, labels = [], []
    for i in range(len(pair[0].coeffs)):
        name = f"frames/steps_{i:03d}.png"
        save_figure(plot_step(pair, i, channels), out / name, params)
        frames.append(name)
        labels.append(f"step {i + 1}/{len(pair[0].coeffs)}, σ = {pair[0].sigmas[i]:.3g} → {pair[0].sigmas[i + 1]:.3g}")
    stats = {p.sampler: fresh_noise_stats(p) for p in pair}
    numbers["reverse_steps"] = {"steps": len(frames), "coefficients": {p.sampler: p.coeffs for p in pair},
                                "fresh": stats}
    shown = sorted({0, 1, len(frames) // 4, len(frames) // 2, 3 * len(frames) // 4, len(frames) - 2,
                    len(frames) - 1} & set(range(len(frames))))
    ddpm, ddim = stats["ddpm"], stats["ddim"]
    space = " (here in the latent space: its first channels are shown)" if model.space.kind == "latent" else ""
    return Section("reverse-steps", "The reverse process, step by step: DDPM and DDIM", [
        "The forward process adds noise in one known way. The reverse process is just as explicit, one step at "
        "a time. At step t the sampler holds x<sub>t</sub>; the network turns it into an estimate x̂<sub>0</sub> "
        "of the clean image and so into the noise ε̂ it believes x<sub>t</sub> contains: x<sub>t</sub> = "
        "√ᾱ<sub>t</sub> x̂<sub>0</sub> + √(1-ᾱ<sub>t</sub>) ε̂. The step to t-1 then takes that picture apart and "
        "puts it together at the lower noise level, in three parts: x<sub>t-1</sub> = a·x̂<sub>0</sub> + b·ε̂ + "
        "s·z with a = √ᾱ<sub>t-1</sub> (<b>denoise</b>: keep the estimate, at the signal level of t-1), b·ε̂ "
        "(<b>re-noise</b> with the noise it saw) and s·z (<b>re-noise</b> with fresh noise z ~ N(0, I)). "
        "The noise budget is always b² + s² = 1-ᾱ<sub>t-1</sub>.",
        "DDPM (Ho et al. 2020, eq. 6–7) spends most of that budget on fresh noise: s² is the variance β̃<sub>t</sub> "
        "of the true posterior q(x<sub>t-1</sub> | x<sub>t</sub>, x<sub>0</sub>), so every step forgets part of "
        "its noise and draws new noise. DDIM (Song et al. 2021, eq. 12 with η = 0) sets s = 0 and re-uses "
        "ε̂ entirely: the path is deterministic, the same noise always gives the same image. Both start from the "
        f"same noise below{space}. Each panel is computed from the states the real samplers recorded: the fresh "
        f"part is what remains of x<sub>t-1</sub> after a·x̂<sub>0</sub> + b·ε̂. For DDPM it is noise: divided by "
        f"s it has mean {ddpm['mean']:+.3f} and standard deviation {ddpm['std']:.3f} over {ddpm['steps']} steps "
        f"(N(0, 1) has 0 and 1); for DDIM it is at most {ddim['max_abs_fresh']:.1e}, rounding error.",
        "Early steps (σ large) are almost all re-noise: a is tiny and x̂<sub>0</sub> a blurry average. Late steps "
        "are almost all denoise: a → 1, b and s → 0, and the last step lands on x̂<sub>0</sub> itself."],
        [Slider("steps-slider", frames, labels, "Move the slider through the steps. Top row DDPM, bottom row "
                "DDIM: x<sub>t</sub>, x̂<sub>0</sub>, ε̂, then the update a·x̂<sub>0</sub> + b·ε̂ + s·z = "
                "x<sub>t-1</sub>.")],
        table(pair, shown), level=4)
