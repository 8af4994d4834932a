"""Level 5, the maths computed on the model: the samplers' measured convergence order (DDIM is the Euler step of the
probability-flow ODE, Song et al. 2021; DPM-Solver++(2M) a second-order multistep solver, Lu et al. 2022), and the
bits/dim of real test images by the variational bound (Ho et al. 2020, eq. 5) and the probability-flow ODE
(Song et al. 2021, app. D), computed by the same function as ``undiffuse evaluate --likelihood``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..evaluation.evaluate import EvalSettings, image_likelihood
from ..models import LoadedModel
from ..plots import save_figure
from ..sampling import SampleRequest, generate
from .page import Picture, Section

ORDER_SAMPLERS = {"ddim": 1, "dpmpp_2m": 2}   # sampler → its order in theory
ORDER_STEPS = (5, 10, 20, 40)
REFERENCE_STEPS = 160
LIKELIHOOD_SETTINGS = EvalSettings(likelihood=2)   # `undiffuse evaluate --likelihood 2`'s settings


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
    """The section: sampler order on the model, and bits/dim by the VLB and the ODE."""
    fit = sampler_order(model, label, seed)
    save_figure(plot_order(fit), out / "order.png", params)
    info = {"steps": list(fit.steps), "reference_steps": REFERENCE_STEPS, "errors": fit.errors, "order": fit.order}
    paragraphs = [
        "The sampler solves an equation. Write the model's noise estimate as a score, s(x, σ) = ∇<sub>x</sub> "
        "log p<sub>σ</sub>(x) = -ε̂/σ = (D(x, σ) - x)/σ² (Tweedie's formula: the denoiser D is the posterior mean "
        "E[x<sub>0</sub> | x], so D = x + σ² s). In σ-form the probability-flow ODE is dx/dσ = -σ s(x, σ) = "
        "(x - D(x, σ))/σ = ε̂ (Song et al. 2021; Karras et al. 2022, eq. 1 with σ(t) = t), and the reverse SDE "
        "adds as much fresh noise as it removes, with the same marginals. DDIM is exactly Euler's method on this "
        "ODE, first order: halving the step halves the error. DPM-Solver++(2M) reuses the previous x̂<sub>0</sub> "
        "to cancel the leading error term, second order: halving the step quarters the error.",
        f"Measured on the model, the same {fit.n} seeds at {', '.join(map(str, fit.steps))} steps of the Karras "
        f"grid against DPM-Solver++(2M) at {REFERENCE_STEPS} steps, the slope of log error over the last three counts: "
        + ", ".join(f"{s} order {fit.order[s]:.2f} (theory {ORDER_SAMPLERS[s]})" for s in fit.errors) + "."]
    pics = [Picture("order.png", "Error against steps on the model, log-log, with the fitted lines.")]
    if model.space.kind == "pixels":
        images, labels = held_out_images(model, image, label, LIKELIHOOD_SETTINGS.likelihood)
        lik = image_likelihood(model, images, labels, LIKELIHOOD_SETTINGS, progress=False)
        info["likelihood"] = lik
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
    numbers["maths"] = info
    return Section("maths", "The maths, computed: score, ODE, order and likelihood", paragraphs, pics, level=5)
