"""An evaluation as a table, a JSON file and a plot of quality against network evaluations."""

from __future__ import annotations

import json
from typing import Any
from pathlib import Path

from matplotlib.figure import Figure

from ..plots import save_figure
from ..sampling import describe_guidance
from .evaluate import Evaluation, sampling_options_given


def sampling_options(settings: dict[str, Any]) -> list[str]:
    """The sampling options an evaluation was given beyond sampler, steps, grid and guidance, in words."""
    given = sampling_options_given(settings)
    words = []
    if "sigma_min" in given or "sigma_max" in given:
        lo, hi = given.get("sigma_min"), given.get("sigma_max")
        words.append(f"σ from {'its top' if hi is None else f'{hi:g}'} to {'its end' if lo is None else f'{lo:g}'}")
    if "rho" in given:
        words.append(f"ρ = {given['rho']:g}")
    if "clip_x0" in given:
        words.append("x̂0 clipped to [-1, 1]")
    if "eps_scale" in given:
        words.append(f"ε̂ divided by {given['eps_scale']:g}")
    if "guidance_rescale" in given:
        words.append(f"CFG rescale {given['guidance_rescale']:g}")
    if "guidance_parallel" in given:
        words.append(f"guidance update's parallel part × {given['guidance_parallel']:g} (APG)")
    if settings.get("autoguide"):
        words.append(f"autoguidance by {settings['autoguide']} (instead of the unconditional branch)")
    return words


def table(ev: Evaluation) -> str:
    """Aligned text: one line per (sampler, steps), the real-vs-real floor last."""
    acc = ev.floor_accuracy is not None
    w = max([16, *(len(r.sampler) + 2 for r in ev.rows)])   # the first column fits every sampler's name
    head = f"{'sampler':<{w}}{'steps':>6}{'NFE':>6}{'FID':>9}{'KID×1e3':>10}{'prec':>7}{'recall':>7}" + \
        (f"{'class acc':>10}" if acc else "") + f"{'seconds':>9}"
    lines = [f"{ev.model}: n = {ev.n} generated vs real from {ev.reference}; features: {ev.features}; {ev.grid} grid"
             + "".join(f", {o}" for o in sampling_options(ev.settings))
             + (f"; {describe_guidance(ev.guidance, ev.guidance_interval)}" if ev.guidance is not None else ""), head]
    for r in ev.rows:
        s = r.scores
        lines.append(f"{r.sampler:<{w}}{r.steps:>6}{r.nfe:>6.0f}{s.fid:>9.2f}{1e3 * s.kid:>10.2f}{s.precision:>7.3f}"
                     f"{s.recall:>7.3f}" + (f"{r.accuracy:>10.1%}" if acc else "") + f"{r.seconds:>9.1f}")
    f = ev.floor
    lines.append(f"{'real vs real':<{w}}{'':>6}{'':>6}{f.fid:>9.2f}{1e3 * f.kid:>10.2f}{f.precision:>7.3f}"
                 f"{f.recall:>7.3f}" + (f"{ev.floor_accuracy:>10.1%}" if acc else "") + f"{'':>9}")
    for r in ev.rows:
        if r.novelty:
            v = r.novelty
            lines.append(f"{r.sampler} {r.steps}: Euclidean distance of spectrograms to the nearest training clip, "
                         f"median (min): generated {v['generated_median']:.2f} ({v['generated_min']:.2f}), "
                         f"held-out real clips {v['test_median']:.2f} ({v['test_min']:.2f}); ratio {v['ratio']:.2f} "
                         "(≈ 1: new, ≪ 1: copies)")
    if ev.likelihood:
        lk = ev.likelihood
        given = " given their class" if lk["conditional"] else ""
        lines.append(f"bits/dim of {lk['n']} held-out images{given}:")
        if "vlb" in lk:
            v = lk["vlb"]
            lines.append(f"  VLB (Ho et al. 2020, {v['timesteps']} steps) {v['bits_per_dim']:.3f} "
                         f"± {v['stderr'] or 0:.3f}  = prior {v['prior']:.3f} + diffusion {v['diffusion']:.3f} "
                         f"+ decoder {v['decoder']:.3f}")
        o = lk["ode"]
        lines.append(f"  probability-flow ODE (Hutchinson, rtol {o['rtol']:g}, {o['nfe']:.0f} NFE) "
                     f"{o['bits_per_dim']:.3f} ± {o['stderr'] or 0:.3f}")
    return "\n".join(lines)


def plot(ev: Evaluation, path: str | Path) -> Path:
    """FID against NFE and against wall time, one line per sampler, the real-vs-real floor dashed."""
    fig = Figure(figsize=(10, 4), dpi=110)
    ax_nfe, ax_time = fig.subplots(1, 2)
    names = list(dict.fromkeys(r.sampler for r in ev.rows))
    for name in names:
        rows = sorted((r for r in ev.rows if r.sampler == name), key=lambda r: r.nfe)
        fids = [r.scores.fid for r in rows]
        ax_nfe.plot([r.nfe for r in rows], fids, "o-", label=name)
        ax_time.plot([r.seconds for r in rows], fids, "o-", label=name)
    for ax, xlabel in ((ax_nfe, "network evaluations per sample (NFE)"), (ax_time, f"seconds for {ev.n} samples")):
        ax.axhline(ev.floor.fid, color="grey", ls="--", lw=1, label="real vs real")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"FID ({ev.features}, n = {ev.n})")
        ax.grid(True, which="both", alpha=0.3)
    ax_nfe.legend(fontsize=8)
    fig.suptitle(f"{ev.model}: quality against cost")
    fig.tight_layout()
    return save_figure(fig, path, {"model": ev.model, "n": ev.n, "features": ev.features})


def write(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """evaluation.json, table.txt and quality_vs_nfe.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "evaluation.json", "table": out / "table.txt", "plot": out / "quality_vs_nfe.png"}
    paths["json"].write_text(json.dumps(ev.to_dict(), indent=2))
    paths["table"].write_text(table(ev) + "\n")
    plot(ev, paths["plot"])
    return paths
