"""Level 5, the maths computed on the model: the reverse SDE and the probability-flow ODE from the same noise (Song
et al. 2021, eqs. 6 and 13, in σ-form as Karras et al. 2022, eq. 6), the samplers' measured convergence order (DDIM
is the Euler step of the probability-flow ODE; DPM-Solver++(2M) a second-order multistep solver, Lu et al. 2022),
the bound's terms step by step against the plain loss (Ho et al. 2020, eqs. 5 and 14), and the bits/dim of real test
images by the variational bound and the probability-flow ODE (Song et al. 2021, app. D), computed by the same
function as ``undiffuse evaluate --likelihood``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import samplers
from ..evaluation.evaluate import EvalSettings, image_likelihood
from ..evaluation.likelihood import VLBTerms, vlb_terms
from ..models import build_schedule
from ..models import LoadedModel
from ..plots import save_figure
from ..sampling import SampleRequest, generate, labels_for
from .page import Picture, Section

ORDER_SAMPLERS = {"ddim": 1, "dpmpp_2m": 2}   # sampler → its order in theory
ORDER_STEPS = (5, 10, 20, 40)
REFERENCE_STEPS = 120
LIKELIHOOD_SETTINGS = EvalSettings(likelihood=2)   # `undiffuse evaluate --likelihood 2`'s settings
FLOW_STEPS = 32        # steps of the ODE and the SDE drawn side by side (Karras grid)
FLOW_SEEDS = 8         # starting noises shared by the two
TERM_STEPS = 40        # chain steps at which the bound's terms are computed
TERM_IMAGES = 8        # held-out images they are averaged over


@dataclass
class SdeOde:
    """The same starting noises through the probability-flow ODE and the reverse SDE: per step x at VP scale."""

    sigmas: list[float]     # the grid's σ (without the final 0)
    ode: Tensor             # (K+1, N, C, H, W): x/√(1+σ²) at each σ, then the sample
    sde: Tensor             # (K+1, N, C, H, W)
    numbers: dict
    images: tuple[Tensor, Tensor] | None = None   # the two sets of samples decoded (ODE, SDE): what is shown


@torch.no_grad()
def sde_and_ode(model: LoadedModel, label: int | None, seed: int = 0, n: int = FLOW_SEEDS,
                steps: int = FLOW_STEPS) -> SdeOde:
    """Euler on the probability-flow ODE dx = (x - D)/σ dσ, and the reverse SDE dx = 2 (x - D)/σ dσ + √(2σ) dω̄
    (σ decreasing) by its ancestral step, from the same noises on the Karras grid: to σ' the SDE keeps the
    fraction σ_down/σ of the noise, σ_down² = σ'⁴/σ², and adds fresh noise of σ_up² = σ'² - σ_down² (DDPM's step in
    σ-form, exact for Gaussian data; to first order the Euler–Maruyama step of the SDE). The last step to σ = 0 is
    x̂₀ for both. Other paths, the same marginals (Song et al. 2021, §4.3)."""
    req = SampleRequest(n=n, seed=seed, steps=steps, grid="karras", label=label, guidance=1.0, precision="fp32")
    labels = labels_for(model, req)
    sigmas = model.sigmas(steps, "karras").float()
    gens = samplers.make_generators([seed + i for i in range(n)])
    start = samplers.randn((n, *model.space.shape), gens) * float(sigmas[0])
    noise_gens = samplers.make_generators([10_000 + seed + i for i in range(n)])
    paths = {kind: flow_path(model.denoiser, start, sigmas, labels, kind, noise_gens) for kind in ("ode", "sde")}
    ode, sde = (model.space.decode(paths[k][-1]) for k in ("ode", "sde"))   # images (a latent model's decoded)
    numbers = {"n": n, "steps": steps,
               "ode_mean": float(ode.mean()), "sde_mean": float(sde.mean()),
               "ode_std": float(ode.std()), "sde_std": float(sde.std()),
               "paired_rms": float((ode - sde).pow(2).mean().sqrt()),
               "ode_to_other_seed_rms": float((ode - ode.roll(1, 0)).pow(2).mean().sqrt())}
    return SdeOde(sigmas[:-1].tolist(), paths["ode"], paths["sde"], numbers, (ode, sde))


@torch.no_grad()
def flow_path(denoiser, start: Tensor, sigmas: Tensor, cond, kind: str, noise: list[torch.Generator]) -> Tensor:
    """(K+1, N, ...): x/√(1+σ²) at each σ of the grid from ``start`` (at σ_0), then the sample; ``kind`` "ode" takes
    Euler steps of the probability-flow ODE, "sde" ancestral steps of the reverse SDE with fresh noise from
    ``noise`` (one generator per sample)."""
    x, states = start.clone(), []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        states.append(x / (1 + s * s) ** 0.5)
        d = denoiser(x, torch.full((len(x),), s), cond)
        if s_next == 0:
            x = d
        elif kind == "ode":
            x = d + (s_next / s) * (x - d)                       # Euler: x + (σ' - σ)(x - D)/σ
        else:
            down = s_next * s_next / s
            up = (s_next * s_next - down * down) ** 0.5
            x = d + (down / s) * (x - d) + up * samplers.randn(x.shape, noise)
    states.append(x)
    return torch.stack(states)


def plot_sde_ode(res: SdeOde, shown: int = 4) -> Figure:
    """Left: one pixel's value along the σ grid, ODE solid, SDE thin, per seed. Right: the samples, ODE over SDE."""
    fig = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
    ax = left.add_subplot()
    _, n, c, h, w = res.ode.shape
    spread = res.ode[-1].reshape(n, -1).std(0)
    pixel = int(spread.argmax())                           # the pixel that differs most between samples
    k = np.arange(len(res.sigmas) + 1)
    colours = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1")
    for j in range(min(shown, n)):
        ax.plot(k, res.ode[:, j].reshape(len(k), -1)[:, pixel].numpy(), color=colours[j % 4], lw=2)
        ax.plot(k, res.sde[:, j].reshape(len(k), -1)[:, pixel].numpy(), color=colours[j % 4], lw=0.8, alpha=0.8)
    ticks = np.linspace(0, len(res.sigmas) - 1, 5).round().astype(int)
    ax.set_xticks(ticks, [f"{res.sigmas[i]:.2g}" for i in ticks])
    ax.set_xlabel("σ along the grid (step by step)")
    ax.set_ylabel(f"pixel ({pixel // w}, {pixel % w}) at VP scale")
    ax.set_title("one pixel: ODE (thick) and SDE (thin), same start", fontsize=9)
    ax.grid(alpha=0.3)
    axes = right.subplots(2, shown)
    ode, sde = res.images if res.images is not None else (res.ode[-1], res.sde[-1])
    for j in range(shown):
        _show_image(axes[0, j], ode[j])
        _show_image(axes[1, j], sde[j])
    axes[0, 0].set_ylabel("ODE", fontsize=9)
    axes[1, 0].set_ylabel("SDE", fontsize=9)
    return fig


def _show_image(ax, img: Tensor) -> None:
    a = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    ax.imshow(a[..., 0] if a.shape[2] == 1 else a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def bound_terms(model: LoadedModel, images: Tensor, labels: Tensor | None, seed: int = 0,
                k: int = TERM_STEPS) -> VLBTerms | None:
    """The bound's terms at ``k`` chain steps spread in log t over the chain (and the decoder at t = 0)."""
    schedule = build_schedule(model.config)
    if schedule is None:
        return None
    t = torch.cat([torch.zeros(1), torch.logspace(0, np.log10(schedule.T - 1), k - 1)]).round().long().unique()
    return vlb_terms(model.denoiser, schedule, images, t, labels, generator=torch.Generator().manual_seed(seed))


def plot_terms(terms: VLBTerms) -> Figure:
    """The bound's term per step, the plain ε-loss, and the weight between them, against t."""
    fig = Figure(figsize=(10, 3.4), dpi=100, layout="constrained")
    a, b, c = fig.subplots(1, 3)
    t = terms.t.numpy()
    a.semilogy(t, terms.bits.numpy(), "o-", ms=3, color="#2b6cb0")
    a.set_title("L_{t-1}: the bound's term (bits/dim)", fontsize=9)
    b.semilogy(t[1:], terms.eps_mse.numpy()[1:], "o-", ms=3, color="#c05621")
    b.set_title("‖ε - ε̂‖² per dim: the plain loss", fontsize=9)
    c.loglog(t[1:], terms.weight.numpy()[1:], "o-", ms=3, color="#2f855a")
    c.set_title("λ_t: the bound's weight on it (nats)", fontsize=9)
    for ax in (a, b, c):
        ax.set_xlabel("chain step t")
        ax.grid(alpha=0.3, which="both")
    return fig


@dataclass
class OrderFit:
    """Each sampler's error against a fine reference at each step count, and the fitted slope of log error."""

    steps: tuple[int, ...]
    errors: dict[str, list[float]]   # sampler → RMS error per step count (pixels in [-1, 1])
    order: dict[str, float]          # −slope of log error against log steps, fitted on the last three counts
    n: int                           # seeds


def sampler_order(model: LoadedModel, label: int | None, seed: int = 0, n: int = 2,
                  steps: tuple[int, ...] = ORDER_STEPS, reference: int = REFERENCE_STEPS) -> OrderFit:
    """The same ``n`` seeds through each sampler of ORDER_SAMPLERS on the Karras grid at each step count, against
    DPM-Solver++(2M) at ``reference`` steps (unguided: guidance 1, fp32); error = RMS over pixels."""
    def run(sampler: str, k: int) -> Tensor:
        req = SampleRequest(n=n, seed=seed, sampler=sampler, steps=k, grid="karras", label=label, guidance=1.0,
                            precision="fp32")
        return generate(model, req, progress=False)[0].double()

    ref = run("dpmpp_2m", reference)
    errors = {s: [float((run(s, k) - ref).pow(2).mean().sqrt()) for k in steps] for s in ORDER_SAMPLERS}
    order = {s: float(-np.polyfit(np.log(steps[-3:]), np.log(e[-3:]), 1)[0]) for s, e in errors.items()}
    return OrderFit(tuple(steps), errors, order, n)


def plot_order(fit: OrderFit) -> Figure:
    """Log-log error against steps, with the fitted lines."""
    fig = Figure(figsize=(6, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    k = np.array(fit.steps, dtype=float)
    for (s, e), colour in zip(fit.errors.items(), ("#2b6cb0", "#c05621"), strict=False):
        ax.loglog(k, e, "o-", color=colour, label=f"{s}: measured order {fit.order[s]:.2f} "
                                                   f"(theory {ORDER_SAMPLERS[s]})")
        c = np.polyfit(np.log(k[-3:]), np.log(e[-3:]), 1)
        ax.loglog(k, np.exp(np.polyval(c, np.log(k))), ":", color=colour, lw=1)
    ax.set_xlabel("steps")
    ax.set_ylabel("RMS error against the reference")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def held_out_images(model: LoadedModel, image: Tensor, label: int | None, n: int) -> tuple[Tensor, Tensor | None]:
    """n held-out Fashion-MNIST test images (and labels) where the model is a Fashion-MNIST one, else ``image``."""
    d = model.config.data
    if d.name == "fashion_mnist":
        from ..data.fashion_mnist import load_fashion_mnist
        test = load_fashion_mnist("test", size=d.image_size, limit=n)
        return test.images.float() / 127.5 - 1, test.labels if model.num_classes else None
    quantised = ((image.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    return quantised[None], torch.tensor([label]) if label is not None and model.num_classes else None


def maths_section(model: LoadedModel, image: Tensor, label: int | None, out: Path, params: dict, numbers: dict,
                  seed: int) -> Section:
    """The section: the SDE and the ODE from the same noise, sampler order on the model, the bound's terms per step,
    and bits/dim by the VLB and the ODE."""
    flows = sde_and_ode(model, label, seed)
    save_figure(plot_sde_ode(flows), out / "sde-ode.png", params)
    fit = sampler_order(model, label, seed)
    save_figure(plot_order(fit), out / "order.png", params)
    info = {"steps": list(fit.steps), "reference_steps": REFERENCE_STEPS, "errors": fit.errors, "order": fit.order,
            "sde_ode": flows.numbers}
    f = flows.numbers
    paragraphs = [
        "The sampler solves an equation. Write the model's noise estimate as a score, s(x, σ) = ∇<sub>x</sub> "
        "log p<sub>σ</sub>(x) = -ε̂/σ = (D(x, σ) - x)/σ² (Tweedie's formula: the denoiser D is the posterior mean "
        "E[x<sub>0</sub> | x], so D = x + σ² s). In σ-form the probability-flow ODE is dx/dσ = -σ s(x, σ) = "
        "(x - D(x, σ))/σ = ε̂ (Song et al. 2021; Karras et al. 2022, eq. 1 with σ(t) = t), and the reverse SDE "
        "adds as much fresh noise as it removes, with the same marginals. DDIM is exactly Euler's method on this "
        "ODE, first order: halving the step halves the error. DPM-Solver++(2M) reuses the previous x̂<sub>0</sub> "
        "to cancel the leading error term, second order: halving the step quarters the error.",
        f"The same {f['n']} starting noises, {f['steps']} steps each way (below). The ODE's path is smooth: each step "
        "removes exactly the noise the σ grid says. The reverse SDE, dx = 2 (x - D)/σ dσ + √(2σ) dω̄, removes twice "
        "as much and draws fresh noise for the rest, so its path jitters and ends at another image; DDPM's ancestral "
        "sampler is this SDE's discrete form, and is the step used here. Both keep the same marginals: over the "
        "samples the pixel values have "
        f"mean {f['ode_mean']:+.3f} and standard deviation {f['ode_std']:.3f} by the ODE, {f['sde_mean']:+.3f} and "
        f"{f['sde_std']:.3f} by the SDE, while an ODE sample and the SDE sample from the same noise lie "
        f"{f['paired_rms']:.3f} apart (RMS per pixel; two ODE samples of different seeds: "
        f"{f['ode_to_other_seed_rms']:.3f}). The noise decides the ODE's image; it only starts the SDE's.",
        f"Measured on the model, the same {fit.n} seeds at {', '.join(map(str, fit.steps))} steps of the Karras "
        f"grid against DPM-Solver++(2M) at {REFERENCE_STEPS} steps, the slope of log error over the last three counts: "
        + ", ".join(f"{s} order {fit.order[s]:.2f} (theory {ORDER_SAMPLERS[s]})" for s in fit.errors) + "."]
    pics = [Picture("sde-ode.png", "The probability-flow ODE and the reverse SDE from the same noises: one pixel's "
                    "path, and the samples they end at."),
            Picture("order.png", "Error against steps on the model, log-log, with the fitted lines.")]
    if model.space.kind == "pixels":
        term_images, term_labels = held_out_images(model, image, label, TERM_IMAGES)   # loaded once: the first
        k = LIKELIHOOD_SETTINGS.likelihood                                              # k are the likelihood's
        images, labels = term_images[:k], term_labels[:k] if term_labels is not None else None
        lik = image_likelihood(model, images, labels, LIKELIHOOD_SETTINGS, progress=False)
        info["likelihood"] = lik
        terms = bound_terms(model, term_images, term_labels, seed)
        vlb = lik.get("vlb")
        parts = (f"the variational bound L<sub>T</sub> + Σ L<sub>t-1</sub> + L<sub>0</sub> (Ho et al. 2020, eq. "
                 f"5; {vlb['timesteps']} importance-sampled steps per image) gives {vlb['bits_per_dim']:.2f} bits/dim: "
                 f"{vlb['prior']:.1e} for the prior, {vlb['diffusion']:.2f} for the denoising terms, "
                 f"{vlb['decoder']:.2f} for the decoder. ") if vlb else ""
        paragraphs.append(
            "Training minimises a weighted sum of the same denoising errors that make up the model's likelihood "
            "bound: each KL term L<sub>t-1</sub> of the ELBO is ‖ε̂ - ε‖² times a weight of t, and the plain "
            "ε-loss drops that weight (Ho et al. 2020, eq. 12–14). On "
            f"{len(images)} held-out image{'s' * (len(images) > 1)} {parts}The probability-flow ODE, integrated "
            f"with a Hutchinson trace estimate ({lik['ode']['nfe']:.0f} network calls), gives "
            f"{lik['ode']['bits_per_dim']:.2f} bits/dim. Both come from the same function as <code>undiffuse "
            f"evaluate --likelihood</code>, with its settings; on so few images each is a noisy estimate.")
        if terms is not None:
            T = build_schedule(model.config).T
            t, bits = terms.t.numpy(), terms.bits.numpy()
            summed = float(np.interp(np.arange(1, T), t[1:], bits[1:]).sum())
            share = float(bits[t <= T // 10].sum() / bits.sum()) if len(bits) else 0.0
            mid = int(np.searchsorted(t, T // 2))
            info["terms"] = {"t": t.tolist(), "bits": bits.tolist(), "eps_mse": terms.eps_mse.tolist(),
                             "weight": terms.weight.tolist(), "summed_diffusion_bits": summed,
                             "images": len(term_images)}
            save_figure(plot_terms(terms), out / "vlb-terms.png", params)
            pics.append(Picture("vlb-terms.png", "The bound's terms step by step on held-out images, the plain "
                                "loss at the same noisy inputs, and the weight that turns one into the other."))
            sampled = f"{vlb['diffusion']:.2f}" if vlb else "not computed"
            paragraphs.append(
                f"Step by step, on {len(term_images)} held-out images at {len(t)} chain steps (below): each term "
                "L<sub>t-1</sub> = KL(q(x<sub>t-1</sub> | x<sub>t</sub>, x<sub>0</sub>) ‖ "
                "p<sub>θ</sub>(x<sub>t-1</sub> | x<sub>t</sub>)) is a constant plus λ<sub>t</sub> ‖ε - ε̂‖², "
                "with λ<sub>t</sub> = ᾱ<sub>t-1</sub> β<sub>t</sub>² σ<sub>t</sub>² / (2 (1-ᾱ<sub>t</sub>)² "
                f"β<sub>t</sub>). The weight falls from {terms.weight[1]:.2g} at t = {int(t[1])} to "
                f"{terms.weight[mid]:.2g} at t = {int(t[mid])}: the bound cares almost only about the last, nearly "
                "clean steps, where the network's error is smallest and least visible, which is why training drops "
                "λ and weights every step alike (the plain loss samples better, Ho et al. 2020, §4.2). Interpolated "
                f"over all {T - 1} steps the terms add up to {summed:.2f} bits/dim for the denoising part (the "
                f"sampled bound above: {sampled}); the first tenth of the chain (t ≤ {T // 10}) holds "
                f"{100 * share:.0f} % of the computed terms.")
    numbers["maths"] = info
    return Section("maths", "The maths, computed: score, ODE, order and likelihood", paragraphs, pics, level=5)
