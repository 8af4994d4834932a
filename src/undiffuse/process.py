"""The forward (noising) process: β schedules, ᾱ, σ ↔ t ↔ log-SNR, q(x_t | x_0), σ grids.

Conventions
-----------
* A DDPM chain has T steps indexed t = 0 … T-1 (as in most code; the paper counts 1 … T).
  Step t turns level t-1 (the data for t = 0) into level t: q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)
  (Ho et al. 2020, eq. 2). ᾱ_t = ∏_{s ≤ t} (1 - β_s), so q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) (eq. 4).
* The samplers work in "σ-form": x = x_0 + σ ε. A VP sample x_t maps onto it exactly by
  x = x_t / √ᾱ_t with σ_t = √((1-ᾱ_t)/ᾱ_t), and log-SNR λ = log(ᾱ/(1-ᾱ)) = -2 log σ.
* Rectified flow x_t = (1-t) x_0 + t ε, t ∈ [0, 1] (Liu et al. 2022; Esser et al. 2024, "SD3") is
  x_t/(1-t) = x_0 + σ ε with σ = t/(1-t), t = σ/(1+σ): the same σ-form, so the same grids and samplers.
* Schedules are kept in float64; grids are float64 1-D tensors, decreasing, ending in 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import UndiffuseError

__all__ = [
    "BETA_SCHEDULES", "FLOW_T_RANGE", "GRID_SIGMA_MAX", "SIGMA_GRIDS", "UNIFORM_T_GRIDS", "DiscreteSchedule",
    "add_noise", "alpha_bar_to_log_snr", "alpha_bar_to_sigma", "betas_cosine", "betas_linear", "betas_scaled_linear",
    "check_sigmas", "flow_shift", "flow_sigma_range", "flow_sigma_to_t", "flow_t_to_sigma", "grid_sigma_max",
    "log_snr_to_alpha_bar", "log_snr_to_sigma", "make_betas", "posterior", "q_sample", "q_step",
    "sample_sigma_logit_normal", "sample_sigma_lognormal", "sample_t_uniform", "sigma_grid", "sigma_to_alpha_bar",
    "sigma_to_log_snr", "sigmas_exponential", "sigmas_flow", "sigmas_from_list", "sigmas_karras",
    "sigmas_uniform_t",
]

# --------------------------------------------------------------------------- β schedules


def betas_linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule, β from 1e-4 to 0.02 over T = 1000 (Ho et al. 2020, §4)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def betas_scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Linear in √β (the latent-diffusion / Stable Diffusion schedule)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def betas_cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule: ᾱ(t) ∝ cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17)."""
    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


BETA_SCHEDULES = {"linear": betas_linear, "scaled_linear": betas_scaled_linear, "cosine": betas_cosine}


def make_betas(name: str, T: int = 1000, **kwargs: float) -> Tensor:
    """β schedule by name: ``linear``, ``scaled_linear`` or ``cosine``."""
    if name not in BETA_SCHEDULES:
        raise UndiffuseError(f"unknown β schedule {name!r}; known: {', '.join(BETA_SCHEDULES)}")
    if not isinstance(T, int) or T < 1:
        raise UndiffuseError(f"the number of diffusion steps T must be a positive integer, got {T!r}")
    return BETA_SCHEDULES[name](T, **kwargs)


# --------------------------------------------------------------------------- exact maps
def alpha_bar_to_sigma(alpha_bar: Tensor) -> Tensor:
    """σ = √((1-ᾱ)/ᾱ): the noise level of x_t/√ᾱ_t in σ-form."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma: Tensor) -> Tensor:
    """ᾱ = 1/(1+σ²)."""
    return 1 / (1 + sigma**2)


def sigma_to_log_snr(sigma: Tensor) -> Tensor:
    """λ = log SNR = log(1/σ²) = -2 log σ."""
    return -2 * sigma.log()


def log_snr_to_sigma(log_snr: Tensor) -> Tensor:
    """σ = exp(-λ/2)."""
    return (-log_snr / 2).exp()


def alpha_bar_to_log_snr(alpha_bar: Tensor) -> Tensor:
    """λ = log(ᾱ/(1-ᾱ))."""
    return alpha_bar.log() - (-alpha_bar).log1p()


def log_snr_to_alpha_bar(log_snr: Tensor) -> Tensor:
    """ᾱ = sigmoid(λ)."""
    return torch.sigmoid(log_snr)


class DiscreteSchedule:
    """A DDPM chain of T steps: β_t, α_t = 1-β_t, ᾱ_t and σ_t, with continuous t ↔ σ maps.

    Fractional t interpolates log σ linearly between integer steps, so t → σ → t is exact
    and integer t give exactly the chain's σ_t.
    """

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UndiffuseError("β must be a 1-D schedule of at least 2 values in (0, 1)")
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        self.sigmas = alpha_bar_to_sigma(self.alpha_bars)  # increasing in t
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_name(cls, name: str = "linear", T: int = 1000, **kwargs: float) -> DiscreteSchedule:
        """Build from a named β schedule (see :func:`make_betas`)."""
        return cls(make_betas(name, T, **kwargs))

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """σ at (fractional) step t ∈ [0, T-1], log-linear between integer steps."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`t_to_sigma` (σ outside [σ_0, σ_{T-1}] clamps to the ends)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        log_sigma = log_sigma.clamp(self.log_sigmas[0], self.log_sigmas[-1])
        hi = torch.searchsorted(self.log_sigmas, log_sigma.contiguous()).clamp(1, self.T - 1)
        lo = hi - 1
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return lo.to(torch.float64) + w

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) (Ho et al. 2020, eq. 4)."""
        return q_sample(x0, _per_sample(self.alpha_bars, t, x0), noise)

    def q_step(self, x_prev: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """One Markov step x_t ~ q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I) (eq. 2)."""
        return q_step(x_prev, _per_sample(self.betas, t, x_prev), noise)

    def posterior(self, x_t: Tensor, x0: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (eq. 6–7); x_{-1} is the data."""
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])  # ᾱ_{t-1}, ᾱ_{-1} = 1
        return posterior(x_t, x0, _per_sample(self.alpha_bars, t, x_t), _per_sample(prev, t, x_t))


def _per_sample(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """table[t] as a tensor broadcastable against ``like`` (t scalar or of shape (batch,))."""
    t = torch.as_tensor(t, dtype=torch.long)
    if t.ndim > 1 or (t.ndim == 1 and len(t) != len(like)):
        raise UndiffuseError(f"t must be a scalar or have one entry per sample ({len(like)}), "
                             f"got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= len(table))).any()):
        raise UndiffuseError(f"t must lie in [0, {len(table) - 1}], got {t.tolist()}")
    v = table[t].to(like.dtype).to(like.device)
    return v.reshape(-1, *[1] * (like.ndim - 1)) if v.ndim else v


# --------------------------------------------------------------------------- the process
def q_sample(x0: Tensor, alpha_bar: Tensor | float, noise: Tensor | None = None) -> Tensor:
    """Closed form of the forward chain: x_t = √ᾱ x_0 + √(1-ᾱ) ε (Ho et al. 2020, eq. 4)."""
    noise = torch.randn_like(x0) if noise is None else noise
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def q_step(x_prev: Tensor, beta: Tensor | float, noise: Tensor | None = None) -> Tensor:
    """One Markov step: x_t = √(1-β_t) x_{t-1} + √β_t ε (Ho et al. 2020, eq. 2)."""
    noise = torch.randn_like(x_prev) if noise is None else noise
    beta = torch.as_tensor(beta, dtype=x_prev.dtype, device=x_prev.device)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def posterior(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float,
              alpha_bar_prev: Tensor | float) -> tuple[Tensor, Tensor]:
    """q(x_prev | x_t, x_0) for any two levels ᾱ_prev > ᾱ (Ho et al. 2020, eq. 6–7).

    With β' = 1 - ᾱ/ᾱ_prev the step between them: mean = √ᾱ_prev β'/(1-ᾱ) x_0
    + √(1-β') (1-ᾱ_prev)/(1-ᾱ) x_t, variance = β' (1-ᾱ_prev)/(1-ᾱ).
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=x_t.dtype, device=x_t.device)
    beta = 1 - alpha_bar / alpha_bar_prev
    mean = (alpha_bar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return mean, variance


def add_noise(x0: Tensor, sigma: Tensor | float, noise: Tensor | None = None) -> Tensor:
    """σ-form noising x = x_0 + σ ε (σ a scalar or of shape (batch,))."""
    noise = torch.randn_like(x0) if noise is None else noise
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    if sigma.ndim == 1:
        sigma = sigma.reshape(-1, *[1] * (x0.ndim - 1))
    return x0 + sigma * noise


# --------------------------------------------------------------------------- training densities
def sample_t_uniform(schedule: DiscreteSchedule, n: int, generator: torch.Generator | None = None) -> Tensor:
    """t ~ U{0, …, T-1}, DDPM's training density (Ho et al. 2020, Algorithm 1)."""
    return torch.randint(0, schedule.T, (n,), generator=generator)


def sample_sigma_lognormal(n: int, p_mean: float = -1.2, p_std: float = 1.2,
                           generator: torch.Generator | None = None) -> Tensor:
    """ln σ ~ N(P_mean, P_std²), EDM's training density (Karras et al. 2022, Table 1)."""
    return (p_mean + p_std * torch.randn(n, generator=generator, dtype=torch.float64)).exp()


# --------------------------------------------------------------------------- rectified flow
# The flow model's t range. t = 1 (pure noise) is σ = ∞, which no σ grid holds. t_max = 0.99 (σ_max = 99, like
# EDM's 80) is where SD3's logit-normal density stops looking (P(t > 0.99) = 2·10⁻⁶ for N(0, 1)); starting from
# σ_max ε leaves out 1 % of x_0 in x_t, as EDM's 80 does. A 10-step Karras grid from σ = 999 instead (t = 0.999)
# broke dpmpp_2m and heun on a toy flow model (energy distance 0.17, 0.15; noise scores 0.07), from 99 it did not
# (0.047, 0.019). t_min = 1/1000 is diffusers' FlowMatchEulerDiscreteScheduler's smallest t.
FLOW_T_RANGE = (1e-3, 0.99)


def flow_t_to_sigma(t: Tensor | float) -> Tensor:
    """σ = t/(1-t): the σ-form noise level of the flow sample x_t = (1-t) x_0 + t ε."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t / (1 - t)


def flow_sigma_to_t(sigma: Tensor | float) -> Tensor:
    """t = σ/(1+σ), the inverse of :func:`flow_t_to_sigma`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return sigma / (1 + sigma)


def flow_shift(t: Tensor | float, shift: float) -> Tensor:
    """SD3's resolution shift t' = s t/(1 + (s-1) t) (Esser et al. 2024, eq. 23); in σ-form simply σ' = s σ."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def flow_sigma_range(shift: float = 1.0) -> tuple[float, float]:
    """(σ_min, σ_max) of a flow model: :data:`FLOW_T_RANGE` in σ, shifted (σ' = shift·σ)."""
    lo, hi = FLOW_T_RANGE
    return shift * lo / (1 - lo), shift * hi / (1 - hi)


def sample_sigma_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, shift: float = 1.0,
                              generator: torch.Generator | None = None) -> Tensor:
    """SD3's training density: t = sigmoid(u), u ~ N(mean, std²) (Esser et al. 2024, §3.1), then shifted.

    σ = t/(1-t) = e^u, so the logit-normal density over t is EDM's log-normal over σ, and the shift
    multiplies σ: σ = shift · exp(mean + std·n). Drawn in σ directly, t never rounds to 1.
    """
    return shift * (mean + std * torch.randn(n, generator=generator, dtype=torch.float64)).exp()


# --------------------------------------------------------------------------- σ grids for sampling
def check_sigmas(sigmas: Tensor | Sequence[float]) -> Tensor:
    """Validate a sampling grid: 1-D, finite, strictly decreasing, ending in exactly 0."""
    try:
        s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise UndiffuseError(f"the σ grid must be a 1-D list of numbers ({err})") from None
    if s.ndim != 1 or len(s) < 2:
        raise UndiffuseError(f"the σ grid must be 1-D with at least 2 entries, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise UndiffuseError("the σ grid contains inf or NaN")
    if float(s[-1]) != 0.0:
        raise UndiffuseError(f"the σ grid must end at 0, it ends at {float(s[-1]):g}")
    bad = torch.nonzero(s[1:] >= s[:-1]).flatten()
    if len(bad):
        i = int(bad[0])
        raise UndiffuseError(f"the σ grid must be strictly decreasing: σ[{i}]={float(s[i]):g} "
                             f"≤ σ[{i + 1}]={float(s[i + 1]):g}")
    return s


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s.to(torch.float64), s.new_zeros(1, dtype=torch.float64)])


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UndiffuseError(f"the number of sampling steps must be a positive integer, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise UndiffuseError(f"need 0 < σ_min < σ_max, got σ_min={sigma_min:g}, σ_max={sigma_max:g}")


def sigmas_uniform_t(schedule: DiscreteSchedule, n: int, spacing: str = "leading",
                     offset: int = 0) -> Tensor:
    """n steps uniform in t over the chain, then 0 (spacings of Lin et al. 2024, Table 2).

    ``leading``: t = 0, T/n, … (DDIM's choice; never reaches t = T-1);
    ``trailing``: t = T-1, T-1-T/n, … (starts at the last step; best at few steps);
    ``linspace``: n points from T-1 down to 0, rounded.
    """
    _check_count(n)
    T = schedule.T
    if n > T:
        raise UndiffuseError(f"cannot take {n} steps on a chain of T={T} steps")
    if spacing == "leading":
        t = torch.arange(n) * (T // n) + offset
    elif spacing == "trailing":
        t = torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)).long().flip(0) - 1
    elif spacing == "linspace":
        t = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long()
    else:
        raise UndiffuseError(f"unknown timestep spacing {spacing!r}; known: leading, trailing, linspace")
    t = t.clamp(0, T - 1).flip(0)
    return _append_zero(schedule.sigmas[t])


def sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, then 0 (Karras et al. 2022, eq. 5)."""
    _check_count(n)
    _check_range(sigma_min, sigma_max)
    if not (math.isfinite(rho) and rho > 0):
        raise UndiffuseError(f"rho must be a positive number, got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return _append_zero(s)


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n σ's uniform in log σ from σ_max to σ_min, then 0."""
    _check_count(n)
    _check_range(sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def sigmas_from_list(values: Sequence[float] | Tensor) -> Tensor:
    """A user's own grid: decreasing positive σ's; a final 0 is appended if missing."""
    s = torch.as_tensor(values, dtype=torch.float64).flatten()
    if len(s) and float(s[-1]) != 0.0:
        s = _append_zero(s)
    return check_sigmas(s)


def sigmas_flow(n: int, sigma_min: float, sigma_max: float, shift: float = 1.0) -> Tensor:
    """n σ's uniform in the unshifted flow time u = σ/(σ + shift) from σ_max to σ_min, then 0.

    u is the t of a flow model before SD3's shift t' = s u/(1 + (s-1) u) (σ = shift·u/(1-u)): this is the
    spacing of diffusers' FlowMatchEulerDiscreteScheduler's timesteps (linear in t, then shifted), whose range starts
    at t = 1 where this one starts at σ_max (a flow model's: t = 0.99, :data:`FLOW_T_RANGE`).
    """
    _check_count(n)
    _check_range(sigma_min, sigma_max)
    if not (math.isfinite(shift) and shift > 0):
        raise UndiffuseError(f"the flow shift must be a positive number, got {shift}")
    u = torch.linspace(sigma_max / (sigma_max + shift), sigma_min / (sigma_min + shift), n, dtype=torch.float64)
    return _append_zero(shift * u / (1 - u))


SIGMA_GRIDS = ("leading", "trailing", "linspace", "karras", "exponential", "flow")
UNIFORM_T_GRIDS = ("leading", "trailing", "linspace")
DISTILLED_GRID = "distilled"  # a few-step model's own levels (its config's distill.sigmas), not a spacing rule


def distilled_sigmas(levels: list[float], steps: int) -> Tensor:
    """The n-step grid of a model distilled at σ ``levels`` (highest first): levels 0, ⌊L/n⌋, ⌊2L/n⌋, … then 0.

    With the four levels [80, 5, 1.5, 0.5], 1 step is [80, 0], 2 steps [80, 1.5, 0], 4 steps every level; the
    1-, 2- and 4-step grids nest, so one student serves all three.
    """
    if not 1 <= steps <= len(levels):
        raise UndiffuseError(f"this model was distilled at {len(levels)} σ levels: it samples in 1 to "
                             f"{len(levels)} steps, not {steps}")
    return torch.tensor([levels[i * len(levels) // steps] for i in range(steps)] + [0.0], dtype=torch.float32)

# Where the grids over a σ range (karras, exponential, flow) start on a discrete VP chain: EDM's σ_max = 80 (Karras
# et al. 2022), not the chain's last σ. A cosine chain ends at σ = 2·10⁴ because its β is clipped at 0.999 on the
# last step (σ_998 = 641); from there a 10-step Karras grid (ρ = 7) puts 6 of its 10 σ's above 100, where x = x0 + σε
# is noise to the network (ᾱ < 10⁻⁴; in bf16 the signal √ᾱ·x0 in x_t is at the rounding of x_t from σ ≈ 250). 80 is
# well past the prior's needs: starting from 80·ε instead of x0 + 80·ε changes x's variance by 1 part in 10⁴ for
# unit-variance data. Measured on the shipped Fashion-MNIST model (dpmpp_2m, 10 steps, 200 samples, Fréchet distance
# of the classifier's features to 1 000 test images, floor 4.7): σ_max = 2·10⁴ 16.8; 640 8.1; 160 7.5; 80 7.5; 40 7.4
# (the trailing grid: 8.7). From 2·10⁴ heun and dpm_2 drew noise at 5 steps (90 %, 79 % of pixels beyond ±1.2), from
# 640 still (57 %, 36 %), from 80 less (24 %, 4 %; first-order long steps, samplers.H_MAX, do the rest). Flat from
# 40 to 160; 80 keeps a margin for data of larger variance (latents of unit variance). A chain that ends lower keeps
# its own end (SD's scaled-linear chain: 14.6). The uniform-t grids keep the chain's steps; the likelihood keeps the
# whole chain (DiscreteSchedule.sigma_max).
GRID_SIGMA_MAX = 80.0


def grid_sigma_max(schedule: DiscreteSchedule) -> float:
    """Where karras, exponential and flow grids start on a discrete chain: min(σ_{T-1}, :data:`GRID_SIGMA_MAX`)."""
    return min(schedule.sigma_max, GRID_SIGMA_MAX)


def sigma_grid(name: str, n: int, schedule: DiscreteSchedule | None = None,
               sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
               shift: float = 1.0) -> Tensor:
    """A grid by name (one of :data:`SIGMA_GRIDS`); σ range defaults to the schedule's, σ_max capped at
    :data:`GRID_SIGMA_MAX` (:func:`grid_sigma_max`; the uniform-t grids take none). ``shift`` spaces the ``flow``
    grid (:func:`sigmas_flow`); the other grids take the range as given (for a flow model,
    :func:`flow_sigma_range` already carries the shift)."""
    if name in UNIFORM_T_GRIDS:
        if sigma_min is not None or sigma_max is not None:
            raise UndiffuseError(f"the {name!r} grid is uniform in the chain's steps: it takes no σ range "
                                 "(use karras or exponential)")
        if schedule is None:
            raise UndiffuseError(f"the {name!r} grid needs a discrete schedule")
        return sigmas_uniform_t(schedule, n, spacing=name)
    if name not in SIGMA_GRIDS:
        raise UndiffuseError(f"unknown σ grid {name!r}; known: {', '.join(SIGMA_GRIDS)}")
    if sigma_min is None or sigma_max is None:
        if schedule is None:
            raise UndiffuseError(f"the {name!r} grid needs sigma_min and sigma_max or a schedule")
        sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
        sigma_max = grid_sigma_max(schedule) if sigma_max is None else sigma_max
    if name == "karras":
        return sigmas_karras(n, sigma_min, sigma_max, rho)
    if name == "flow":
        return sigmas_flow(n, sigma_min, sigma_max, shift)
    return sigmas_exponential(n, sigma_min, sigma_max)
