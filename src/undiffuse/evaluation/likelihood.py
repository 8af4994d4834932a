"""Likelihoods of diffusion models: the DDPM variational bound and the probability-flow ODE.

* :func:`vlb_bits_per_dim` — the variational bound of Ho et al. 2020 (eq. 5) on 8-bit data: an upper
  bound on -log₂ P(x_0)/D for the DDPM chain p_θ(x_{0:T}) whose means come from the denoiser.
* :func:`ode_log_likelihood` — the exact log-density of the probability-flow ODE model (Song et al.
  2021, app. D.2), with an exact or a Hutchinson trace; :func:`ode_bits_per_dim` turns it into a bound
  on 8-bit images by uniform dequantisation.
* :func:`exact_nll` — for low-dimensional data whose true density is known: the model's NLL beside the
  data's own; the gap estimates KL(data ‖ model).

Conventions. Samples are in σ-form, x = x_0 + σ ε, and a DDPM sample is x_t = x/√(1+σ_t²) (the
denoiser always receives σ-form). Chain steps are indexed t = 0 … T-1 as in :mod:`undiffuse.process`;
the paper's step t is our t-1, so its L_0 (the decoder) sits at our t = 0 and its L_T (the prior)
uses ᾱ_{T-1}. 8-bit data are k/127.5 - 1 for k = 0 … 255: grid points 2/255 apart in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..denoiser import EDMDenoiser, VPDenoiser
from ..errors import UndiffuseError
from ..process import DiscreteSchedule
from ..samplers.registry import randn

__all__ = ["NLLComparison", "ODEBitsResult", "VLBResult", "exact_nll", "ode_bits_per_dim", "ode_log_likelihood",
           "vlb_bits_per_dim"]

BIN = 2 / 255  # width of one 8-bit level in [-1, 1]
LN2 = math.log(2)
Variance = Literal["small", "large"]


# --------------------------------------------------------------------------- input checks
def _check_batch(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UndiffuseError(f"{what} must be a tensor of shape (batch, ...) with at least one sample, got {shape}")
    if x.dtype != torch.uint8 and not bool(torch.isfinite(x).all()):
        raise UndiffuseError(f"{what} contains inf or NaN")
    return x


def _as_8bit(x: Tensor, what: str) -> Tensor:
    """8-bit data as float64 grid values k/127.5 - 1: uint8 levels, or floats in [-1, 1] on that grid."""
    x = _check_batch(x, what)
    if x.dtype == torch.uint8:
        return x.double() / 127.5 - 1
    if not x.is_floating_point():
        raise UndiffuseError(f"{what} must be uint8 levels or floats in [-1, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise UndiffuseError(f"{what} must lie in [-1, 1] (8-bit images scaled by k/127.5 - 1), "
                             f"got values in [{lo:.4g}, {hi:.4g}]")
    k = (x.double() + 1) * 127.5
    off = (k - k.round()).abs()
    if float(off.max()) > 1e-3:
        bad = float(x.flatten()[off.flatten().argmax()])
        raise UndiffuseError(f"{what} must hold 8-bit values k/127.5 - 1 (k = 0…255), got {bad:.6g} between two "
                             f"levels: pass uint8 images or quantise first")
    return k.round().clamp(0, 255) / 127.5 - 1


def _take(cond: Any, rows: Tensor, n: int) -> Any:
    """The condition of some rows of the batch: a tensor, or a dict / list of tensors, of first size n."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        if cond.ndim == 0 or len(cond) != n:
            raise UndiffuseError(f"cond must have one entry per sample ({n}), got shape {tuple(cond.shape)}")
        return cond[rows.to(cond.device)]
    if isinstance(cond, dict):
        return {k: _take(v, rows, n) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_take(v, rows, n) for v in cond)
    raise UndiffuseError(f"cannot split a condition of type {type(cond).__name__} into batches")


def _layers(denoiser: nn.Module) -> list[nn.Module]:
    """The denoiser and the ones it wraps (``.inner`` of clamping, autocast and guidance wrappers)."""
    out = [denoiser]
    while isinstance(getattr(out[-1], "inner", None), nn.Module) and len(out) < 16:
        out.append(out[-1].inner)
    return out


def _check_chain(denoiser: nn.Module, schedule: Any) -> None:
    """The VLB is a sum over a DDPM chain: it needs the discrete schedule the model was trained on."""
    layers = _layers(denoiser)
    if any(isinstance(m, EDMDenoiser) for m in layers):
        raise UndiffuseError("the VLB needs a DDPM (VP) model on a discrete chain; this is an EDM model, "
                             "continuous in σ: use ode_bits_per_dim")
    if not isinstance(schedule, DiscreteSchedule):
        raise UndiffuseError(f"the VLB needs the model's DiscreteSchedule (models.build_schedule(cfg)), "
                             f"got {type(schedule).__name__}")
    for m in layers:
        own = getattr(m, "schedule", None) if isinstance(m, VPDenoiser) else None
        if own is not None and (own.T != schedule.T or not torch.allclose(own.sigmas, schedule.sigmas)):
            raise UndiffuseError(f"the schedule given (T={schedule.T}) is not the one the model was trained on "
                                 f"(T={own.T}): pass models.build_schedule(cfg)")


# --------------------------------------------------------------------------- the variational bound
@dataclass
class VLBResult:
    """The bound of Ho et al. 2020 (eq. 5) in bits/dim, split where the bits go (means over images)."""

    bits_per_dim: float     # mean over images of the whole bound
    per_image: Tensor       # (N,) each image's bound, bits/dim
    prior: float            # L_T = KL(q(x_T | x_0) ‖ N(0, I))
    diffusion: float        # Σ_{t≥2} L_{t-1}, the denoising KLs (a Monte-Carlo estimate unless timesteps = T-1)
    decoder: float          # L_0 = -log p_θ(x_0 | x_1), the discretised Gaussian decoder
    per_timestep: Tensor    # (T,) mean bits/dim of the term at chain step t (0: decoder); NaN where none was drawn
    timesteps: int          # diffusion terms evaluated per image; T-1 is the exact sum
    variance: str           # "large" (β_t) or "small" (β̃_t): the reverse-step variance


def _sampled_steps(schedule: DiscreteSchedule, k: int, n: int,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """k steps per image from 1 … T-1 and their importance weights, so Σ_j w_j L_{t_j} is unbiased for Σ_t L_t.

    A step's term is about ½ E‖x_0 - x̂_0‖² |ΔSNR| (Kingma et al. 2021, the discrete-time loss), and for data
    of unit variance E‖x_0 - x̂_0‖² ≈ σ²/(1+σ²) per dimension: so t is drawn with probability ∝ ᾱ_t Δlog σ_t²,
    mixed with 10 % uniform to keep every weight 1/(k p_t) bounded (defensive importance sampling), by
    stratified inverse-CDF sampling: one draw in each k-th of the probability mass.
    """
    T = schedule.T
    step = schedule.log_sigmas[1:] - schedule.log_sigmas[:-1]            # (T-1,) Δ log σ of steps 1 … T-1
    p = schedule.alpha_bars[1:] * step
    p = 0.9 * p / p.sum() + 0.1 / (T - 1)
    u = torch.rand(n, k, generator=generator, dtype=torch.float64, device=generator.device if generator else "cpu")
    u = (torch.arange(k, dtype=torch.float64) + u.cpu()) / k            # (n, k), one per stratum
    index = torch.searchsorted(p.cumsum(0), u.contiguous(), right=True).clamp(max=T - 2)
    return index + 1, 1 / (k * p[index])


def _log_bin_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) - Φ(lo)), accurate in both tails: bins right of 0 are mirrored to the left."""
    flip = (lo + hi) > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    a, b = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    return b + torch.log(-torch.expm1(a - b))


def _decoder_nll(x0: Tensor, x0_hat: Tensor, std: float) -> Tensor:
    """-log p(x_0 | x_1): N(x̂_0, std²) integrated over each 8-bit bin, end bins to ±∞ (Ho et al. 2020, §3.3)."""
    lo = torch.where(x0 < -1 + BIN / 4, -math.inf, (x0 - BIN / 2 - x0_hat) / std)
    hi = torch.where(x0 > 1 - BIN / 4, math.inf, (x0 + BIN / 2 - x0_hat) / std)
    return -_log_bin_mass(lo, hi).flatten(1).sum(1)


def _term_nats(schedule: DiscreteSchedule, t: Tensor, x0: Tensor, x0_hat: Tensor, variance: Variance) -> Tensor:
    """The bound's term at chain step t, in nats per sample: L_0 (decoder) at t = 0, else L_{t-1} (eq. 5).

    q(x_{t-1} | x_t, x_0) and p_θ(x_{t-1} | x_t) share x_t, so their means differ by
    coef · (x_0 - x̂_0) with coef = √ᾱ_{t-1} β_t/(1-ᾱ_t) (eq. 7): the KL needs no x_t at all.
    """
    x0, x0_hat = x0.double(), x0_hat.double()
    dims = x0[0].numel()
    t = t.cpu()
    beta, ab = schedule.betas, schedule.alpha_bars
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    post_var = beta * (1 - ab_prev) / (1 - ab)               # β̃_t, 0 at t = 0
    model_var = post_var if variance == "small" else beta    # (T,)
    out = torch.empty(len(t), dtype=torch.float64)
    dec = t == 0
    if bool(dec.any()):
        # The decoder's variance is β_1 (paper numbering) for both choices: β̃_1 = 0, as x_0 is then known.
        # (Ho et al.'s code substitutes β̃_2, far narrower than a bin on schedules that are fine near σ_0.)
        std = math.sqrt(float(beta[0]))
        out[dec] = _decoder_nll(x0[dec.to(x0.device)], x0_hat[dec.to(x0.device)], std).cpu()
    kl = ~dec
    if bool(kl.any()):
        tk = t[kl]
        coef = ab_prev[tk].sqrt() * beta[tk] / (1 - ab[tk])
        sq = ((x0 - x0_hat) ** 2)[kl.to(x0.device)].flatten(1).sum(1).cpu()  # (B,)
        ratio = post_var[tk] / model_var[tk]
        out[kl] = 0.5 * dims * (ratio - 1 - ratio.log()) + coef**2 * sq / (2 * model_var[tk])
    return out


def _prior_nats(schedule: DiscreteSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(N(√ᾱ x_0, (1-ᾱ) I) ‖ N(0, I)) at ᾱ = ᾱ_{T-1}, nats per sample."""
    ab = float(schedule.alpha_bars[-1])
    x0 = x0.double().flatten(1)
    return 0.5 * (ab * x0**2 - ab - math.log1p(-ab)).sum(1).cpu()


@torch.no_grad()
def vlb_bits_per_dim(denoiser: nn.Module, schedule: DiscreteSchedule, x0: Tensor, cond: Any = None, *,
                     variance: Variance = "large", timesteps: int | None = None, batch_size: int = 256,
                     generator: torch.Generator | None = None, progress: bool = True) -> VLBResult:
    """The variational bound L_T + Σ_{t≥2} L_{t-1} + L_0 on 8-bit x_0 in bits/dim (Ho et al. 2020, eq. 5).

    ``x0`` (N, ...) holds 8-bit data: uint8 levels or floats k/127.5 - 1. The reverse step is
    p_θ(x_{t-1} | x_t) = N(μ̃_t(x_t, x̂_0), σ_t² I) with x̂_0 = D(x_t √(1+σ_t²), σ_t) and σ_t² = β_t
    (``variance="large"``) or β̃_t (``"small"``, the posterior's own variance); the decoder is N(x̂_0, β_1)
    over 8-bit bins (§3.3). Both give a bound; β_t is the tighter one for data that still look continuous
    at the chain's first noise levels (8-bit images: σ_0 is about one level) — β̃_t then understates the
    true reverse variance on the first, coarse steps in log σ (0.7 bit/dim on a discretised Gaussian).
    ``timesteps=None`` sums all T-1 denoising terms (T denoiser calls per image); an int k draws k
    importance-weighted steps per image (see :func:`_sampled_steps`) for an unbiased estimate. Each term
    draws its own x_t ~ q(x_t | x_0), so even the full sum is a one-sample Monte-Carlo estimate.
    """
    _check_chain(denoiser, schedule)
    if variance not in ("small", "large"):
        raise UndiffuseError(f"variance must be 'large' (β_t) or 'small' (β̃_t), got {variance!r}")
    T = schedule.T
    k = T - 1 if timesteps is None else timesteps
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= T - 1:
        raise UndiffuseError(f"timesteps must be an integer in 1 … {T - 1} (or None for all), got {timesteps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UndiffuseError(f"batch_size must be a positive integer, got {batch_size!r}")
    given = x0.dtype if isinstance(x0, Tensor) else torch.float32
    x0 = _as_8bit(x0, "x0")                                            # (N, ...) float64
    n, dims = len(x0), x0[0].numel()
    work = _work_dtype(denoiser, given)
    if timesteps is None:                                               # the exact sum: every step once
        steps, weights = torch.arange(1, T).expand(n, k), torch.ones(n, k, dtype=torch.float64)
    else:
        steps, weights = _sampled_steps(schedule, k, n, generator)     # (N, k)
    # One job per (image, step); step 0 is the decoder, drawn for every image with weight 1.
    steps = torch.cat([torch.zeros(n, 1, dtype=torch.long), steps], 1).flatten()
    weights = torch.cat([torch.ones(n, 1, dtype=torch.float64), weights], 1).flatten()
    images = torch.arange(n).repeat_interleave(k + 1)
    terms = torch.empty(len(steps), dtype=torch.float64)
    for start in tqdm(range(0, len(steps), batch_size), desc="VLB", disable=None if progress else True, leave=False):
        rows, t = images[start:start + batch_size], steps[start:start + batch_size]
        x0_b = x0[rows.to(x0.device)]
        sigma = schedule.sigmas[t].to(x0.device)                       # (B,)
        noise = randn(x0_b.shape, generator, torch.float64, x0.device)
        x = x0_b + sigma.reshape(-1, *[1] * (x0.ndim - 1)) * noise      # σ-form of x_t ~ q(x_t | x_0)
        x0_hat = denoiser(x.to(work), sigma.to(work), _take(cond, rows, n))
        terms[start:start + len(t)] = _term_nats(schedule, t, x0_b, x0_hat, variance)
    prior = _prior_nats(schedule, x0)                                   # (N,)
    per_pair = terms.reshape(n, k + 1)
    decoder = per_pair[:, 0]
    diffusion = (per_pair[:, 1:] * weights.reshape(n, k + 1)[:, 1:]).sum(1)
    bits = 1 / (dims * LN2)
    total = (prior + diffusion + decoder) * bits
    per_step = torch.zeros(T, dtype=torch.float64).index_add_(0, steps, terms * bits)
    count = torch.zeros(T, dtype=torch.float64).index_add_(0, steps, torch.ones_like(terms))
    return VLBResult(float(total.mean()), total, float(prior.mean() * bits), float(diffusion.mean() * bits),
                     float(decoder.mean() * bits), per_step / count, k, variance)


@dataclass
class VLBTerms:
    """The bound's terms one chain step at a time (Ho et al. 2020, eq. 5), means over images."""

    t: Tensor         # (K,) chain steps (0: the decoder L_0, else L_{t-1})
    bits: Tensor      # (K,) the term in bits/dim
    eps_mse: Tensor   # (K,) the plain training loss ‖ε - ε̂‖²/dims at the same x_t
    weight: Tensor    # (K,) the ELBO's weight λ_t on that loss, KL_t = const_t + λ_t ‖ε - ε̂‖² (nats; 0 at t = 0)


@torch.no_grad()
def vlb_terms(denoiser: nn.Module, schedule: DiscreteSchedule, x0: Tensor, t: Tensor, cond: Any = None, *,
              variance: Variance = "large", generator: torch.Generator | None = None) -> VLBTerms:
    """Each term L_{t-1} of the bound at the chain steps ``t`` on 8-bit ``x0``, beside the ε-MSE the plain loss
    uses: with x̂_0 = x_t - σ_t ε̂ in σ-form, KL_t = ½ dims (r - 1 - ln r) + λ_t ‖ε - ε̂‖² with
    λ_t = coef_t² σ_t² / (2 σ²_model) and coef_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) (eq. 7): the ELBO is a λ_t-weighted sum of
    the per-step denoising errors, which the plain loss (Ho et al. 2020, eq. 14) weights alike."""
    _check_chain(denoiser, schedule)
    t = torch.as_tensor(t, dtype=torch.long).flatten()
    if len(t) == 0 or int(t.min()) < 0 or int(t.max()) >= schedule.T:
        raise UndiffuseError(f"chain steps must lie in 0 … {schedule.T - 1}")
    x0 = _as_8bit(x0, "x0")
    n, dims = len(x0), x0[0].numel()
    work = _work_dtype(denoiser, torch.float32)
    beta, ab = schedule.betas, schedule.alpha_bars
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    post_var = beta * (1 - ab_prev) / (1 - ab)
    model_var = post_var if variance == "small" else beta
    bits, mse, weight = [], [], []
    for step in t.tolist():
        sigma = schedule.sigmas[step]
        noise = randn(x0.shape, generator, torch.float64, x0.device)
        x0_hat = denoiser((x0 + sigma * noise).to(work), sigma.expand(n).to(work), cond).double()
        steps = torch.full((n,), step, dtype=torch.long)
        bits.append(float(_term_nats(schedule, steps, x0, x0_hat, variance).mean()) / (dims * LN2))
        mse.append(float((x0 - x0_hat).pow(2).mean()) / float(sigma) ** 2)
        coef = ab_prev[step].sqrt() * beta[step] / (1 - ab[step])
        weight.append(0.0 if step == 0 else float(coef**2 * sigma**2 / (2 * model_var[step])))
    return VLBTerms(t, torch.tensor(bits, dtype=torch.float64), torch.tensor(mse, dtype=torch.float64),
                    torch.tensor(weight, dtype=torch.float64))


def _work_dtype(denoiser: nn.Module, given: torch.dtype) -> torch.dtype:
    """The dtype to call the denoiser in: that of its first floating parameter or buffer, else the data's."""
    for t in (*denoiser.parameters(), *denoiser.buffers()):
        if t.is_floating_point():
            return t.dtype
    return given if given.is_floating_point else torch.float32


# --------------------------------------------------------------------------- the probability-flow ODE
# Dormand & Prince (1980) RK5(4) tableau: nodes, stage weights, 5th-order weights, error weights (5th - 4th).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_DP_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
         -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


def _trace_of_jacobian(x: Tensor, x0_hat: Tensor, trace: str, probes: Tensor | None) -> Tensor:
    """tr ∂D/∂x per sample: one vector-Jacobian product per dimension, or Hutchinson's E[εᵀ J ε] (B,)."""
    if not x0_hat.requires_grad:  # a denoiser that ignores x has a zero Jacobian
        return x.new_zeros(len(x))
    flat = x0_hat.flatten(1)
    if trace == "exact":
        d = flat.shape[1]
        return sum(torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i] for i in range(d))
    total = x.new_zeros(len(x))
    for eps in probes:  # (B, ...) each
        vjp = torch.autograd.grad((x0_hat * eps).sum(), x, retain_graph=True)[0]
        total = total + (vjp * eps).flatten(1).sum(1)
    return total / len(probes)


def _rk4(f: Callable[[float, Tensor], Tensor], y: Tensor, s0: float, s1: float, steps: int) -> Tensor:
    """Classical 4th-order Runge–Kutta, ``steps`` equal steps from s0 to s1."""
    h = (s1 - s0) / steps
    for i in range(steps):
        s = s0 + i * h
        k1 = f(s, y)
        k2 = f(s + h / 2, y + h / 2 * k1)
        k3 = f(s + h / 2, y + h / 2 * k2)
        k4 = f(s + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def _dopri5(f: Callable[[float, Tensor], Tensor], y: Tensor, s0: float, s1: float, rtol: float, atol: float,
            max_steps: int = 10_000) -> Tensor:
    """Adaptive Dormand–Prince RK5(4) with FSAL; y (B, n) whose last column is the log-density integral.

    Error is the RMS over the sample's coordinates or the log-density error, whichever is worse, of the
    worst sample: one step size for the batch.
    """
    s, h, k1 = s0, (s1 - s0) / 64, f(s0, y)
    for _ in range(max_steps):
        if s >= s1:
            return y
        h = min(h, s1 - s)
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:], strict=True):
            ks.append(f(s + c * h, y + h * sum(w * k for w, k in zip(a, ks, strict=False) if w)))
        y_new = y + h * sum(w * k for w, k in zip(_DP_A[6], ks, strict=False) if w)
        err = h * sum(w * k for w, k in zip(_DP_E, ks, strict=True) if w)
        ratio = err / (atol + rtol * torch.maximum(y.abs(), y_new.abs()))
        norm = float(torch.maximum(ratio[:, :-1].pow(2).mean(1).sqrt(), ratio[:, -1].abs()).max())
        if norm <= 1:
            s, y, k1 = s + h, y_new, ks[-1]
        h *= min(5.0, max(0.2, 0.9 * norm ** -0.2)) if norm > 0 else 5.0
        if h < 1e-12 * (s1 - s0):
            raise UndiffuseError("the ODE solver's step size collapsed: the denoiser returns non-finite or erratic "
                                 "values")
    raise UndiffuseError(f"the ODE solver needed more than {max_steps} steps: loosen rtol/atol or give steps=")


def _check_ode_args(sigma_min: float, sigma_max: float, trace: str, probe: str, probes: int, steps: int | None,
                    rtol: float, atol: float) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise UndiffuseError(f"need 0 < sigma_min < sigma_max < ∞, got sigma_min={sigma_min:g}, "
                             f"sigma_max={sigma_max:g}")
    if trace not in ("exact", "hutchinson"):
        raise UndiffuseError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if probe not in ("rademacher", "gaussian"):
        raise UndiffuseError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise UndiffuseError(f"probes must be a positive integer, got {probes!r}")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise UndiffuseError(f"steps must be a positive integer or None (adaptive), got {steps!r}")
    if not (rtol > 0 and atol > 0):
        raise UndiffuseError(f"rtol and atol must be positive, got rtol={rtol:g}, atol={atol:g}")


def _ode_logp(denoiser: nn.Module, x: Tensor, sigma_min: float, sigma_max: float, cond: Any, trace: str,
              probe: str, probes: int, steps: int | None, rtol: float, atol: float, prior_var: float,
              log_prior: Callable[[Tensor], Tensor] | None,
              generator: torch.Generator | None) -> tuple[Tensor, int]:
    """log p_{σ_min}(x) (B,) float64 and the number of denoiser calls."""
    shape, dims, work = x.shape, x[0].numel(), _work_dtype(denoiser, x.dtype)
    probe_eps = None
    if trace == "hutchinson":  # fixed along the path, so the integrand stays smooth for the adaptive solver
        probe_eps = randn((probes, *shape), generator, work, x.device)
        if probe == "rademacher":
            probe_eps = probe_eps.sign()
    nfe = 0

    def f(s: float, y: Tensor) -> Tensor:
        """d/d(log σ) of [x, ∫ div]: x - D(x, σ) and d - tr ∂D/∂x (σ dx/dσ = x - D)."""
        nonlocal nfe
        nfe += 1
        sigma = torch.full((len(y),), math.exp(s), dtype=work, device=x.device)
        with torch.enable_grad():
            xs = y[:, :-1].reshape(shape).to(work).detach().requires_grad_(True)
            x0_hat = denoiser(xs, sigma, cond)
            tr = _trace_of_jacobian(xs, x0_hat, trace, probe_eps)
        drift = (xs - x0_hat).detach().double().flatten(1)
        return torch.cat([drift, (dims - tr.detach().double())[:, None]], 1)

    y0 = torch.cat([x.double().flatten(1), x.new_zeros(len(x), 1, dtype=torch.float64)], 1)  # (B, d+1)
    s0, s1 = math.log(sigma_min), math.log(sigma_max)
    y1 = _rk4(f, y0, s0, s1, steps) if steps is not None else _dopri5(f, y0, s0, s1, rtol, atol)
    x_T, integral = y1[:, :-1], y1[:, -1]
    if log_prior is not None:
        prior = log_prior(x_T.reshape(shape).to(work)).double().reshape(len(x))
    else:
        var = sigma_max**2 + prior_var
        prior = -0.5 * (x_T**2).sum(1) / var - 0.5 * dims * math.log(2 * math.pi * var)
    return prior + integral, nfe


def ode_log_likelihood(denoiser: nn.Module, x: Tensor, sigma_min: float, sigma_max: float, *, cond: Any = None,
                       trace: Literal["hutchinson", "exact"] = "hutchinson",
                       probe: Literal["rademacher", "gaussian"] = "rademacher", probes: int = 1,
                       steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5, prior_var: float = 0.0,
                       log_prior: Callable[[Tensor], Tensor] | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """log p_{σ_min}(x) in nats per sample (B,) under the probability-flow ODE (Song et al. 2021, app. D.2).

    In σ-form the ODE is dx/dσ = (x - D(x, σ))/σ; in s = log σ the drift is x - D and its divergence
    d - tr ∂D/∂x, so log p_{σ_min}(x) = log p_{σ_max}(x(σ_max)) + ∫ (d - tr ∂D/∂x) d log σ.
    The trace is exact (d vector-Jacobian products per call: small d only) or Hutchinson's estimate with
    ``probes`` Rademacher or Gaussian vectors drawn once per call, unbiased for the log-density.
    ``steps`` gives fixed-step RK4 in log σ (4 calls a step); None, adaptive Dormand–Prince at rtol/atol.

    The prior at σ_max is N(0, (σ_max² + prior_var) I): prior_var = 0 is where the samplers start
    (x = σ_max ε). The true marginal p_{σ_max} is the data convolved with N(0, σ_max² I); the Gaussian with
    the data's variance v, prior_var = v, matches it to O(v/σ_max²) per dimension pointwise (a VP chain's
    own prior N(0, I) on x_T is prior_var = 1). ``log_prior`` (x → (B,)) replaces it, e.g. an exact one.
    """
    x = _check_batch(x, "x")
    if not x.is_floating_point():
        raise UndiffuseError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    _check_ode_args(sigma_min, sigma_max, trace, probe, probes, steps, rtol, atol)
    return _ode_logp(denoiser, x, sigma_min, sigma_max, cond, trace, probe, probes, steps, rtol, atol,
                     prior_var, log_prior, generator)[0]


@dataclass
class ODEBitsResult:
    """Dequantised probability-flow ODE bound on 8-bit images, in bits/dim."""

    bits_per_dim: float  # mean over images
    per_image: Tensor    # (N,) bits/dim
    nfe: float           # denoiser calls per batch, mean over batches (each call also costs the VJPs)


def ode_bits_per_dim(denoiser: nn.Module, x0: Tensor, sigma_min: float, sigma_max: float, *, cond: Any = None,
                     trace: Literal["hutchinson", "exact"] = "hutchinson",
                     probe: Literal["rademacher", "gaussian"] = "rademacher", probes: int = 1,
                     steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5, prior_var: float = 0.0,
                     batch_size: int = 16, generator: torch.Generator | None = None,
                     progress: bool = True) -> ODEBitsResult:
    """-log₂ P(x_0)/D bound for 8-bit x_0 by uniform dequantisation (Theis et al. 2016; Song et al. 2021, app. D.2).

    Each level k/127.5 - 1 owns the bin of width 2/255 centred on it (the VLB decoder's bins):
    y = x_0 + (2/255)(u - ½), u ~ U(0, 1)^D. Then -log P(x_0) ≤ E_u[-log p(y)] - D log(2/255), so
    bits/dim = (-log p(y)/D + log 127.5)/ln 2 per image, one u per image. Other arguments as
    :func:`ode_log_likelihood`.
    """
    given = x0.dtype if isinstance(x0, Tensor) else torch.float32
    x0 = _as_8bit(x0, "x0")
    _check_ode_args(sigma_min, sigma_max, trace, probe, probes, steps, rtol, atol)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UndiffuseError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, dims = len(x0), x0[0].numel()
    work = _work_dtype(denoiser, given)
    bits, nfes = torch.empty(n, dtype=torch.float64), []
    for start in tqdm(range(0, n, batch_size), desc="ODE likelihood", disable=None if progress else True,
                      leave=False):
        rows = torch.arange(start, min(start + batch_size, n))
        u = torch.rand(x0[rows].shape, generator=generator, dtype=torch.float64,
                       device=generator.device if generator else "cpu").to(x0.device)
        y = (x0[rows.to(x0.device)] + BIN * (u - 0.5)).to(work)
        logp, nfe = _ode_logp(denoiser, y, sigma_min, sigma_max, _take(cond, rows, n), trace, probe, probes,
                              steps, rtol, atol, prior_var, None, generator)
        bits[rows] = (-logp.cpu() / dims + math.log(127.5)) / LN2
        nfes.append(nfe)
    return ODEBitsResult(float(bits.mean()), bits, sum(nfes) / len(nfes))


# --------------------------------------------------------------------------- low-dimensional data
@dataclass
class NLLComparison:
    """Model NLL beside the true NLL on the same points, nats per sample; gap ≈ KL(data ‖ model) ≥ 0."""

    model_nll: float      # mean -log p_model(x)
    true_nll: float       # mean -log p_true(x)
    gap: float            # model_nll - true_nll
    gap_stderr: float     # standard error of the gap (paired over points)
    model_log_p: Tensor   # (N,) per point
    true_log_p: Tensor    # (N,) per point


def exact_nll(denoiser: nn.Module, x: Tensor, true_log_density: Callable[[Tensor], Tensor] | Any,
              sigma_min: float, sigma_max: float, *, cond: Any = None, steps: int | None = None,
              rtol: float = 1e-6, atol: float = 1e-6, prior_var: float = 0.0, batch_size: int = 4096,
              progress: bool = False) -> NLLComparison:
    """The model's NLL (probability-flow ODE, exact trace) against the true NLL on points x (N, d) drawn from the data.

    ``true_log_density`` is a callable x → log p(x) (N,), or an object with ``log_density(x, sigma)`` (such as
    :class:`~undiffuse.analytic.GaussianMixtureDenoiser`), evaluated at σ_min so that both sides describe the
    same smoothed data. E[log p_true - log p_model] over data points is KL(data ‖ model) ≥ 0: the gap.
    The exact trace costs d vector-Jacobian products per call; meant for 2-D toy data.
    """
    x = _check_batch(x, "x")
    if not x.is_floating_point():
        raise UndiffuseError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    _check_ode_args(sigma_min, sigma_max, "exact", "rademacher", 1, steps, rtol, atol)
    if hasattr(true_log_density, "log_density"):
        truth = true_log_density.log_density(x, sigma_min)
    elif callable(true_log_density):
        truth = true_log_density(x)
    else:
        raise UndiffuseError("true_log_density must be a callable x -> log p(x) or have a log_density(x, sigma) method")
    truth = torch.as_tensor(truth).double().reshape(-1).cpu()
    if len(truth) != len(x):
        raise UndiffuseError(f"true_log_density returned {len(truth)} values for {len(x)} points")
    model = torch.empty(len(x), dtype=torch.float64)
    for start in tqdm(range(0, len(x), batch_size), desc="exact NLL", disable=None if progress else True,
                      leave=False):
        rows = torch.arange(start, min(start + batch_size, len(x)))
        model[rows] = _ode_logp(denoiser, x[rows.to(x.device)], sigma_min, sigma_max, _take(cond, rows, len(x)),
                                "exact", "rademacher", 1, steps, rtol, atol, prior_var, None, None)[0].cpu()
    diff = truth - model
    stderr = float(diff.std() / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return NLLComparison(float(-model.mean()), float(-truth.mean()), float(diff.mean()), stderr, model, truth)
