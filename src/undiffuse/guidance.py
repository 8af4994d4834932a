"""Denoiser wrappers that steer sampling; each works with every sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser


def null_labels(cond: Any) -> Any:
    """The "no condition" counterpart of a label tensor: label -1 for every sample."""
    if isinstance(cond, Tensor):
        return torch.full_like(cond, -1)
    raise TypeError(f"no default unconditional value for cond of type {type(cond).__name__}; pass uncond=")


def null_text(null: Any) -> Callable[[dict], dict]:
    """The "no condition" of a text condition: the empty prompt's embedding (a one-row
    :class:`~undiffuse.text.TextEmbedding`) repeated for the batch."""
    return lambda cond: null.expand(len(cond["pooled"])).as_cond()


class CFGDenoiser(Denoiser):
    """Classifier-free guidance: D_w = D(x, σ, ∅) + w (D(x, σ, c) − D(x, σ, ∅)) (Ho & Salimans 2022, eq. 6).

    w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 trades diversity for
    fidelity to the condition. Both branches run as one batch of 2B.
    """

    def __init__(self, inner: Callable[..., Tensor], scale: float,
                 uncond: Callable[[Any], Any] = null_labels):
        super().__init__()
        self.inner, self.scale, self.uncond = inner, float(scale), uncond

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if cond is None or self.scale == 1.0:
            return self.inner(x, sigma, cond)
        null = self.uncond(cond)
        if self.scale == 0.0:
            return self.inner(x, sigma, null)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), _cat_cond(cond, null))
        x0_cond, x0_uncond = both.chunk(2)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)


def _cat_cond(cond: Any, null: Any) -> Any:
    """Stack a condition and its null version along the batch (tensors, or dicts of tensors)."""
    if isinstance(cond, Tensor):
        return torch.cat([cond, null])
    if isinstance(cond, dict):
        return {k: _cat_cond(cond[k], null[k]) for k in cond}
    raise TypeError(f"cannot batch cond of type {type(cond).__name__}")
