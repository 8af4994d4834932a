"""Denoiser wrappers that steer sampling; each works with every sampler.

Guidance mixes a positive estimate (the conditional model) with a negative one: the same model without its
condition (classifier-free guidance) or a weaker model with it (autoguidance),

    D_w = D_neg + w (D_pos − D_neg),

optionally only for σ in an interval (one evaluation instead of two outside it), with the guided x̂0's
spread rescaled towards the conditional one's, and with the update's component along the conditional x̂0
down-weighted (adaptive projected guidance). Everything here acts on x̂0, the denoiser's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser
from .errors import UndiffuseError


def null_labels(cond: Any) -> Any:
    """The "no condition" counterpart of a label tensor: label -1 for every sample."""
    if isinstance(cond, Tensor):
        return torch.full_like(cond, -1)
    raise TypeError(f"no default unconditional value for cond of type {type(cond).__name__}; pass uncond=")


def null_text(null: Any) -> Callable[[dict], dict]:
    """The "no condition" of a text condition: the empty prompt's embedding (a one-row
    :class:`~undiffuse.text.TextEmbedding`) repeated for the batch."""
    return lambda cond: null.expand(len(cond["pooled"])).as_cond()


# --------------------------------------------------------------------------- the pieces
@dataclass(frozen=True)
class GuidanceInterval:
    """Guide only where σ ∈ [lo, hi] (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves
    sample and distribution quality", arXiv 2404.07724, §3): at high σ guidance drags samples towards few modes,
    at low σ it does little; outside the interval the plain conditional estimate is used.

    σ is the denoiser's σ (σ-form, x = x0 + σ ε, in the model's space); ``hi`` may be ``inf``. Both ends are
    included (the paper writes (lo, hi]; the two differ only at a σ exactly equal to lo).
    """

    lo: float
    hi: float

    def __post_init__(self):
        if not (self.lo >= 0 and self.hi >= self.lo and not math.isnan(self.hi)):
            raise UndiffuseError(f"the guidance interval needs 0 ≤ LO ≤ HI, got {self.lo},{self.hi}")

    @property
    def everywhere(self) -> bool:
        """Whether every σ ≥ 0 is inside: the same as no interval."""
        return self.lo <= 0 and self.hi == math.inf

    def contains(self, sigma: Tensor) -> Tensor:
        """Per sample: is its σ in the interval? ``sigma`` of shape (batch,) → bool (batch,)."""
        return (sigma >= self.lo) & (sigma <= self.hi)


def parse_interval(text: str) -> tuple[float, float]:
    """``"LO,HI"`` → (lo, hi), checked as a :class:`GuidanceInterval`; ``HI`` may be ``inf``."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if math.isnan(lo) or math.isnan(hi):
        raise UndiffuseError(f"the guidance interval must be two σ values LO,HI, e.g. 0.3,5, got {text!r}")
    GuidanceInterval(lo, hi)
    return lo, hi


def rescale_guidance(x0_guided: Tensor, x0_cond: Tensor, phi: float) -> Tensor:
    """CFG rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4,
    Algorithm 2), here on x̂0: x_rescaled = x_cfg · std(x_pos)/std(x_cfg) per sample, then
    x_final = φ x_rescaled + (1 − φ) x_cfg.

    A large w inflates the guided estimate's spread (over-exposed, over-saturated images); φ = 1 gives it exactly
    the conditional estimate's per-sample std, φ = 0 leaves it alone. A sample whose guided estimate is constant
    (std 0) is left alone too.
    """
    dims = tuple(range(1, x0_guided.ndim))
    std_cond, std_guided = x0_cond.std(dim=dims, keepdim=True), x0_guided.std(dim=dims, keepdim=True)
    ratio = torch.where(std_guided > 0, std_cond / std_guided.clamp_min(torch.finfo(std_guided.dtype).tiny), 1.0)
    return x0_guided * (phi * ratio + (1 - phi))


def project_guidance(update: Tensor, x0_cond: Tensor, parallel: float) -> Tensor:
    """The guidance update D_pos − D_neg with its component parallel to the conditional x̂0 weighed by ``parallel``
    (the η of adaptive projected guidance: Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models", arXiv 2410.02416, §3.1, eq. 7–8), per sample.

    The parallel component mostly scales x̂0 up (over-saturation); the orthogonal one carries the condition's
    features. ``parallel`` = 1 leaves the update alone (CFG), 0 keeps only the orthogonal part. A sample whose
    conditional x̂0 is zero is left alone.
    """
    dims = tuple(range(1, update.ndim))
    norm2 = (x0_cond * x0_cond).sum(dim=dims, keepdim=True)
    coef = torch.where(norm2 > 0, (update * x0_cond).sum(dim=dims, keepdim=True)
                       / norm2.clamp_min(torch.finfo(norm2.dtype).tiny), 0.0)
    return update - (1 - parallel) * coef * x0_cond


# --------------------------------------------------------------------------- the wrappers
class GuidedDenoiser(Denoiser):
    """D_w = D_neg + w (D_pos − D_neg) where guidance applies, D_pos elsewhere; subclasses say what D_pos and
    D_neg are.

    ``interval`` (a :class:`GuidanceInterval`, None: every σ) is tested per sample. Samplers pass one σ per step,
    so a batch is either all inside (both estimates) or all outside (one evaluation, D_pos alone). A batch of
    mixed σ (the ``adaptive`` sampler keeps a σ per sample) evaluates D_neg on the rows inside only, and every row
    gets what it would get alone. ``rescale`` is the φ of :func:`rescale_guidance` (0: off); ``parallel`` the
    weight of the update's component along D_pos (:func:`project_guidance`; 1: classifier-free guidance as is).
    """

    def __init__(self, scale: float, interval: GuidanceInterval | None = None, rescale: float = 0.0,
                 parallel: float = 1.0):
        super().__init__()
        if not math.isfinite(scale):
            raise UndiffuseError(f"guidance must be a finite number, got {scale}")
        if not 0 <= rescale <= 1:
            raise UndiffuseError(f"the guidance rescale φ must be in [0, 1], got {rescale}")
        if not 0 <= parallel <= 1:
            raise UndiffuseError(f"the guidance's parallel weight η must be in [0, 1], got {parallel}")
        interval = None if interval is not None and interval.everywhere else interval  # [0, ∞]: no interval
        self.scale, self.interval, self.rescale, self.parallel = float(scale), interval, float(rescale), float(parallel)

    def positive(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """D_pos(x, σ, cond): the conditional estimate, one evaluation."""
        raise NotImplementedError  # pragma: no cover

    def both(self, x: Tensor, sigma: Tensor, cond: Any, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """(D_pos for every row, D_neg for ``rows`` (None: every row))."""
        raise NotImplementedError  # pragma: no cover

    def guides(self, cond: Any) -> bool:
        """Whether there is anything to guide with (CFG needs a condition)."""
        return True

    def mix(self, pos: Tensor, neg: Tensor) -> Tensor:
        """D_neg + w (D_pos − D_neg) = D_pos + (w − 1)(D_pos − D_neg), the update projected when η < 1, rescaled when
        φ > 0."""
        if self.parallel == 1.0:
            guided = neg + self.scale * (pos - neg)
        else:
            guided = pos + (self.scale - 1) * project_guidance(pos - neg, pos, self.parallel)
        return rescale_guidance(guided, pos, self.rescale) if self.rescale else guided

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if self.scale == 1.0 or not self.guides(cond):
            return self.positive(x, sigma, cond)
        sigma = sigma.expand(len(x)) if sigma.ndim == 0 else sigma
        rows = None
        if self.interval is not None:
            inside = self.interval.contains(sigma)
            if not bool(inside.any()):
                return self.positive(x, sigma, cond)  # outside: one evaluation, no guidance
            rows = None if bool(inside.all()) else torch.nonzero(inside).flatten()
        pos, neg = self.both(x, sigma, cond, rows)
        if rows is None:
            return self.mix(pos, neg)
        out = pos.clone()
        out[rows] = self.mix(pos[rows], neg)
        return out


class CFGDenoiser(GuidedDenoiser):
    """Classifier-free guidance: D_w = D(x, σ, ∅) + w (D(x, σ, c) − D(x, σ, ∅)) (Ho & Salimans 2022, eq. 6).

    w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 trades diversity for
    fidelity to the condition. Both branches run as one batch of 2B (B + the rows inside the interval).
    ``interval``, ``rescale`` and ``parallel`` as in :class:`GuidedDenoiser`.
    """

    def __init__(self, inner: Callable[..., Tensor], scale: float, uncond: Callable[[Any], Any] = null_labels,
                 interval: GuidanceInterval | None = None, rescale: float = 0.0, parallel: float = 1.0):
        super().__init__(scale, interval, rescale, parallel)
        self.inner, self.uncond = inner, uncond

    def guides(self, cond: Any) -> bool:
        return cond is not None

    def positive(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        return self.inner(x, sigma, cond)

    def both(self, x: Tensor, sigma: Tensor, cond: Any, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        null = self.uncond(cond)
        if rows is None:
            out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), _cat_cond(cond, null))
        else:
            out = self.inner(torch.cat([x, x[rows]]), torch.cat([sigma, sigma[rows]]),
                             _cat_cond(cond, _take(null, rows)))
        return out[:len(x)], out[len(x):]

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if self.scale == 0.0 and not self.rescale and self.parallel == 1.0 and self.interval is None \
                and cond is not None:
            return self.inner(x, sigma, self.uncond(cond))  # w = 0: the unconditional model, one evaluation
        return super().forward(x, sigma, cond)


class AutoguidedDenoiser(GuidedDenoiser):
    """Autoguidance: D_w = D_0(x, σ, c) + w (D_1(x, σ, c) − D_0(x, σ, c)) (Karras et al. 2024, "Guiding a diffusion
    model with a bad version of itself", arXiv 2406.02507, §3): the negative is not the unconditional model but a
    worse one of the same kind (an earlier checkpoint, a smaller net), conditioned like the good one.

    Both models see the same x, σ and condition (an unconditional model can be autoguided too); they cannot share
    a batch, so a guided step costs two calls. ``guide`` must work in the same space with the same conditioning
    (:func:`check_guide`). ``interval``, ``rescale`` and ``parallel`` as in :class:`GuidedDenoiser`.
    """

    def __init__(self, inner: Callable[..., Tensor], guide: Callable[..., Tensor], scale: float,
                 interval: GuidanceInterval | None = None, rescale: float = 0.0, parallel: float = 1.0):
        super().__init__(scale, interval, rescale, parallel)
        self.inner, self.guide = inner, guide

    def positive(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        return self.inner(x, sigma, cond)

    def both(self, x: Tensor, sigma: Tensor, cond: Any, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        pos = self.inner(x, sigma, cond)
        if rows is None:
            return pos, self.guide(x, sigma, cond)
        return pos, self.guide(x[rows], sigma[rows], _take(cond, rows))


def check_guide(model: Any, guide: Any) -> None:
    """Refuse, in one line, a guide model (a :class:`~undiffuse.models.LoadedModel`) that does not denoise the
    same thing as ``model``: another space or shape, other classes, another text conditioning, other vectors.
    The parameterisation and backbone may differ: both are denoisers of x̂0."""
    def space(m: Any) -> tuple:
        return (getattr(m.space, "kind", "pixels"), tuple(m.space.shape), getattr(m.space, "scale", None))

    def text(m: Any) -> tuple:
        return (int(m.meta.get("context_dim") or 0), m.config.data.text_length if m.text_conditioned else None)

    checks = [("space", space), ("classes", lambda m: list(m.class_names)), ("text conditioning", text),
              ("vector size", lambda m: m.meta.get("dim"))]
    diffs = [f"{what} {key(guide)} vs {key(model)}" for what, key in checks if key(guide) != key(model)]
    if diffs:
        raise UndiffuseError(f"the guide model {guide.source} does not match {model.source} "
                             f"(guide vs model: {'; '.join(diffs)})")


def _cat_cond(cond: Any, null: Any) -> Any:
    """Stack a condition and its null version along the batch (tensors, or dicts of tensors)."""
    if isinstance(cond, Tensor):
        return torch.cat([cond, null])
    if isinstance(cond, dict):
        return {k: _cat_cond(cond[k], null[k]) for k in cond}
    raise TypeError(f"cannot batch cond of type {type(cond).__name__}")


def _take(cond: Any, rows: Tensor) -> Any:
    """The condition of the samples ``rows`` (a tensor, a dict of tensors, or None)."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[rows.to(cond.device)]
    if isinstance(cond, dict):
        return {k: _take(v, rows) for k, v in cond.items()}
    raise TypeError(f"cannot take rows of cond of type {type(cond).__name__}")
