"""Noise as an encoding: a real image run backwards through DDIM's deterministic ODE to its noise and forwards
again (DDIM inversion, Song et al. 2021, §4.3 and eq. 13), what that noise does and does not determine, and
two seeds' noises blended on the sphere by slerp (Shoemake 1985; as DDIM §5.3 interpolates x_T)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from .. import samplers
from ..errors import UndiffuseError
from ..models import LoadedModel
from ..plots import save_figure
from ..sampling import SampleRequest, card_request, guided_denoiser, request_sigmas
from .page import Picture, Section
from .reverse import _show

STEPS = 50                  # DDIM steps of the inversion and its decoding
PERTURB = 0.1               # the small perturbation: ε' = (ε + δ n)/√(1 + δ²), δ = PERTURB
RECONSTRUCTION_BOUND = 0.1  # the page's stated bound on the reconstruction's RMS error (pixels in [-1, 1])


def rms(a: Tensor, b: Tensor) -> float:
    """Root-mean-square distance per value (pixels in [-1, 1])."""
    return float((a.double() - b.double()).pow(2).mean().sqrt())


@torch.no_grad()
def ddim_invert(denoiser, x0: Tensor, sigmas: Tensor, cond=None) -> Tensor:
    """DDIM inversion: the deterministic step x_σ' = x̂₀ + σ' ε̂ (Song et al. 2021, eq. 13 in σ-form) taken up the
    grid ``sigmas`` (a sampling grid, descending to 0) from x0 to σ_max; ε̂ is evaluated at the current state (at
    σ = 0, at the first σ above it), the standard approximation of the ODE run backwards. Returns x at σ_max."""
    up = sigmas.flip(0).tolist()  # 0, σ_{K-1}, …, σ_max
    x = x0.clone()
    for sigma, sigma_next in pairwise(up):
        at = sigma if sigma > 0 else sigma_next
        s = torch.full((len(x),), at, dtype=x.dtype)
        x0_hat = denoiser(x, s, cond)
        eps_hat = (x - x0_hat) / at
        x = x0_hat + sigma_next * eps_hat
    return x


def slerp(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985) between two noises, per sample: the blend keeps the norm
    of a Gaussian draw, where a straight line's midpoint falls inside the shell (norm × cos(θ/2) ≈ 0.71)."""
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    theta = torch.arccos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp_min(1e-6)[:, None]
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return out.to(z0.dtype).reshape(z0.shape)


@dataclass
class Encoding:
    """A real image, its DDIM noise, and what comes back from that noise and from others."""

    image: Tensor            # (C, H, W) the real image
    noise: Tensor            # (C', H', W') the inverted state divided by σ_max: "its noise" (model space)
    reconstruction: Tensor   # DDIM from that noise
    perturbed: Tensor        # DDIM from the noise perturbed by PERTURB
    fresh: Tensor            # DDIM from a fresh noise (another seed)
    ddpm: Tensor             # (k, C, H, W) the stochastic DDPM sampler from the same noise, k seeds
    numbers: dict


@torch.no_grad()
def encode_and_decode(model: LoadedModel, image: Tensor, label: int | None, seed: int = 0, steps: int = STEPS,
                      ddpm_seeds: int = 2) -> Encoding:
    """Invert ``image`` (C, H, W) to its noise with ``steps`` DDIM steps (the plain conditional model, guidance 1,
    in fp32: guidance would bend the ODE), decode it again, and decode its perturbation, a fresh seed's noise and
    (with fresh noise at every step) DDPM from it; the RMS distances go to ``numbers``."""
    req = SampleRequest(n=1, seed=seed, sampler="ddim", steps=steps, grid="trailing", label=label, guidance=1.0,
                        precision="fp32")
    denoiser, labels, text = guided_denoiser(model, req)
    sigmas = request_sigmas(model, req)
    x0 = model.space.encode(image[None].float())
    x_top = ddim_invert(denoiser, x0, sigmas, _cond(labels, text, 1))
    noise = x_top / float(sigmas[0])
    fresh = samplers.randn(noise.shape, samplers.make_generators([seed + 1000]))
    nudge = samplers.randn(noise.shape, samplers.make_generators([seed + 2000]))
    starts = torch.cat([noise, (noise + PERTURB * nudge) / math.sqrt(1 + PERTURB ** 2), fresh])
    ddim = samplers.get("ddim")
    out = model.space.decode(ddim(denoiser, starts * float(sigmas[0]), sigmas, cond=_cond(labels, text, 3)))
    gens = samplers.make_generators([seed + 3000 + i for i in range(ddpm_seeds)])
    ddpm = model.space.decode(samplers.get("ddpm")(denoiser, noise.expand(ddpm_seeds, *noise.shape[1:])
                                                   * float(sigmas[0]), sigmas, cond=_cond(labels, text, ddpm_seeds),
                                                   generator=gens))
    image = image.float()
    numbers = {"steps": steps, "bound": RECONSTRUCTION_BOUND, "perturbation": PERTURB,
               "reconstruction_rms": rms(out[0], image), "perturbed_rms": rms(out[1], out[0]),
               "fresh_rms": rms(out[2], image), "ddpm_rms": [rms(d, image) for d in ddpm],
               "noise_std": float(noise.std()), "noise_mean": float(noise.mean()),
               "noise_neighbour_correlation": neighbour_correlation(noise[0])}
    return Encoding(image, noise[0], out[0], out[1], out[2], ddpm, numbers)


def _cond(labels: Tensor | None, text, n: int):
    """The condition of n samples of the request's one class or prompt (or None)."""
    if text is not None:
        return text.expand(n).as_cond()
    return labels[:1].expand(n) if labels is not None else None


def neighbour_correlation(x: Tensor) -> float:
    """Correlation of horizontally neighbouring values of (C, H, W), over all rows and channels."""
    a, b = x[..., :-1].flatten().double(), x[..., 1:].flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def plot_encoding(enc: Encoding) -> Figure:
    """The image, its noise, the reconstruction; the perturbed noise's, a fresh noise's and DDPM's images."""
    n = enc.numbers
    panels = [(enc.image, "the real image", (-1, 1)),
              (enc.noise[:enc.image.shape[0]], f"its noise (std {n['noise_std']:.2f})", (-3, 3)),
              (enc.reconstruction, f"decoded again: RMS {n['reconstruction_rms']:.3f}", (-1, 1)),
              (enc.perturbed, f"noise + {PERTURB:g}·n: {n['perturbed_rms']:.3f} away", (-1, 1)),
              (enc.fresh, f"a fresh noise: RMS {n['fresh_rms']:.3f}", (-1, 1))]
    panels += [(d, f"DDPM from its noise: {r:.3f}", (-1, 1)) for d, r in zip(enc.ddpm, n["ddpm_rms"], strict=True)]
    fig = Figure(figsize=(1.9 * len(panels), 2.4), dpi=100, layout="constrained")
    for ax, (img, title, (lo, hi)) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        _show(ax, img, lo, hi)
        ax.set_title(title, fontsize=8)
    return fig


@dataclass
class Interpolation:
    ts: list[float]
    slerp: Tensor        # (len(ts), C, H, W): the images along the slerp path
    lerp: Tensor         # (len(ts), C, H, W): along the straight line, for contrast
    slerp_norms: list[float]   # ‖z‖/√d of each blended noise
    lerp_norms: list[float]
    ends: Tensor         # (2, C, H, W): the two seeds' images, drawn on their own as `undiffuse sample` draws them


@torch.no_grad()
def interpolate(model: LoadedModel, seeds: tuple[int, int], label: int | None, points: int = 7,
                steps: int = 20) -> Interpolation:
    """Decode slerp(ε_a, ε_b, t) and the straight line's blend for ``points`` t in [0, 1] with DDIM, guided as
    the model samples; the endpoints are exactly the seeds' own images."""
    req = card_request(model, n=points, seed=seeds[0], sampler="ddim", steps=steps, grid="trailing", label=label)
    denoiser, labels, text = guided_denoiser(model, req)
    sigmas = request_sigmas(model, req)
    shape = model.space.shape
    z = [samplers.randn((1, *shape), samplers.make_generators([s])) for s in seeds]
    ts = torch.linspace(0, 1, points).tolist()
    path_s = torch.cat([slerp(z[0], z[1], t) for t in ts])
    path_l = torch.cat([(1 - t) * z[0] + t * z[1] for t in ts])
    ddim = samplers.get("ddim")
    images = model.space.decode(ddim(denoiser, torch.cat([path_s, path_l]) * float(sigmas[0]), sigmas,
                                     cond=_cond(labels, text, 2 * points)))
    ends = torch.cat([model.space.decode(ddim(denoiser, zi * float(sigmas[0]), sigmas, cond=_cond(labels, text, 1)))
                      for zi in z])
    d = math.sqrt(z[0].numel())
    return Interpolation(ts, images[:points], images[points:], [float(p.norm()) / d for p in path_s],
                         [float(p.norm()) / d for p in path_l], ends)


def plot_interpolation(res: Interpolation) -> Figure:
    """Top: the images along slerp; bottom: along the straight line, each with its noise's norm."""
    k = len(res.ts)
    fig = Figure(figsize=(1.5 * k, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(2, k)
    for c, t in enumerate(res.ts):
        _show(axes[0, c], res.slerp[c])
        axes[0, c].set_title(f"t = {t:.2f}\n‖ε‖/√d = {res.slerp_norms[c]:.2f}", fontsize=8)
        _show(axes[1, c], res.lerp[c])
        axes[1, c].set_title(f"‖ε‖/√d = {res.lerp_norms[c]:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("slerp", fontsize=9)
    axes[1, 0].set_ylabel("straight line", fontsize=9)
    return fig


def model_image(model: LoadedModel, fallback: Tensor, user_image=None) -> tuple[Tensor, int | None, str]:
    """A real image at the model's resolution, its class (or None) and a note: the user's image, else the first
    Fashion-MNIST test image (one the model never trained on), else ``fallback`` (C, H, W) at the model's size."""
    from ..data.folder import load_image_tensor
    d = model.config.data
    if user_image is not None:
        return load_image_tensor(user_image, d.image_size, d.channels, error="cannot use --image"), None, \
            "your image"
    if d.name == "fashion_mnist":
        from ..data.fashion_mnist import load_fashion_mnist
        try:
            test = load_fashion_mnist("test", size=d.image_size, limit=1)
            label = int(test.labels[0]) if model.num_classes else None
            return test.images[0].float() / 127.5 - 1, label, "the first Fashion-MNIST test image"
        except UndiffuseError:
            pass
    image = torch.nn.functional.interpolate(fallback[None].float(), size=(d.image_size, d.image_size),
                                            mode="area")[0] if fallback.shape[-1] != d.image_size else fallback
    return image.float(), None, "the image of the sections above"


def encoding_section(model: LoadedModel, image: Tensor, label: int | None, note: str, out: Path, params: dict,
                     numbers: dict, seed: int) -> Section:
    """The section: a real image inverted to its noise and back, and what else that noise gives."""
    enc = encode_and_decode(model, image, label, seed)
    n = numbers["encoding"] = enc.numbers
    save_figure(plot_encoding(enc), out / "encoding.png", params)
    ddpm = ", ".join(f"{r:.3f}" for r in n["ddpm_rms"])
    return Section("encoding", "The noise as an encoding of the image", [
        "If the deterministic sampler (DDIM) maps each noise to one image, the noise is a code for its image: can "
        "we go the other way? DDIM's step is the Euler step of an ordinary differential equation, and an ODE can "
        "be run backwards: from a real image, step up the same σ grid, each step x<sub>σ'</sub> = x̂<sub>0</sub> + "
        "σ' ε̂ with the network's estimates at the current state (DDIM inversion, Song et al. 2021, §4.3 and "
        f"eq. 13). Here {note} was inverted in {n['steps']} steps to its noise and decoded again by DDIM.",
        f"The reconstruction misses the image by an RMS error of {n['reconstruction_rms']:.3f} per pixel (pixels "
        f"in [-1, 1]; the page is checked to stay below {n['bound']:g}); a fresh seed's image lies "
        f"{n['fresh_rms']:.3f} from it, {n['fresh_rms'] / max(n['reconstruction_rms'], 1e-9):.0f} times "
        "further. The inverted noise looks like noise: mean "
        f"{n['noise_mean']:+.3f}, standard deviation {n['noise_std']:.3f}, neighbour correlation "
        f"{n['noise_neighbour_correlation']:+.3f} (a fresh Gaussian draw has 0, 1 and 0; a real image's code is "
        "noise-like but not exactly a typical draw).",
        f"What the noise does and does not determine: perturbed slightly (ε + {n['perturbation']:g}·n, rescaled) it "
        f"decodes to nearly the same image ({n['perturbed_rms']:.3f} from the reconstruction): the map is smooth. "
        f"A fresh noise gives another image. The stochastic DDPM sampler started from the very same noise draws "
        f"fresh noise at every step and ends elsewhere ({ddpm} from the image): only the deterministic ODE makes "
        "the noise an encoding. So why add noise at all? Training needs it: the network learns to denoise at "
        "every noise level, and only that makes the ODE exist. The code is found, not stored."],
        [Picture("encoding.png", "A real image, its DDIM noise, the reconstruction; the noise perturbed, a fresh "
                 "noise, and DDPM from the same noise (RMS distances in the titles).")], level=4)


def interpolation_section(model: LoadedModel, label: int | None, out: Path, params: dict, numbers: dict,
                          seed: int) -> Section:
    """The section: two seeds' noises blended by slerp, and by a straight line for contrast."""
    res = interpolate(model, (seed, seed + 1), label)
    ends = [rms(res.slerp[0], res.ends[0]), rms(res.slerp[-1], res.ends[1])]
    numbers["interpolation"] = {"ts": res.ts, "slerp_norms": res.slerp_norms, "lerp_norms": res.lerp_norms,
                                "endpoint_rms": ends}
    save_figure(plot_interpolation(res), out / "interpolation.png", params)
    d = math.prod(model.space.shape)
    return Section("interpolation", "Why every noise gives an image", [
        "Why does a random noise not decode to a garbled mess? Because there is nothing else to draw: in "
        f"d = {d:,} dimensions almost all of a Gaussian's draws lie at the same distance from the centre, "
        "‖ε‖ ≈ √d, on a thin shell. Training showed the network noised images from that shell at every noise level, "
        "so the whole shell is mapped onto images; each noise is one point of it.",
        f"Two seeds' noises ε<sub>{seed}</sub> and ε<sub>{seed + 1}</sub>, blended along the great circle between "
        "them (slerp, Shoemake 1985; the interpolation of DDIM §5.3): slerp(t) = sin((1-t)θ)/sin θ · "
        "ε<sub>a</sub> + sin(tθ)/sin θ · ε<sub>b</sub>. Its norm stays on the shell (‖ε‖/√d from "
        f"{min(res.slerp_norms):.2f} to {max(res.slerp_norms):.2f}) and every point of the path decodes to an "
        "image that morphs from one seed's image into the other's; the ends are exactly the seeds' own images "
        f"(RMS {ends[0]:.1e} and {ends[1]:.1e} from the seeds' images drawn on their own). The straight line "
        f"between them cuts inside the shell (‖ε‖/√d down to {min(res.lerp_norms):.2f} at t = 0.5): a noise the "
        "network never saw at that σ, and its images come out smoother and flatter, detail lost."],
        [Picture("interpolation.png", "Top: DDIM images along slerp between two seeds' noises. Bottom: along "
                 "the straight line. Each title: the noise's norm ‖ε‖/√d.")], level=4)
