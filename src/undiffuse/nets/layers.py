"""Layers shared by the backbones: embeddings of the noise level and of the class label, the text condition."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import UndiffuseError


class PositionalEmbedding(nn.Module):
    """Transformer sinusoids of a scalar, [cos(x ω_i), sin(x ω_i)] with ω_i = P^{-i/(d/2)}.

    DDPM embeds the discrete step t ∈ [0, T) this way (Ho et al. 2020, §4; Vaswani et al. 2017, §3.5).
    """

    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise UndiffuseError(f"the embedding dimension must be even, got {dim}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B,) -> (B, dim)
        angle = x.float()[:, None] * self.freqs[None]
        return torch.cat([angle.cos(), angle.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos 2πωx, sin 2πωx], ω ~ N(0, scale²), fixed at init.

    For a continuous noise level such as c_noise = ¼ ln σ (Tancik et al. 2020; Song et al. 2021, NCSN++).
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise UndiffuseError(f"the embedding dimension must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:  # (B,) -> (B, dim)
        angle = 2 * math.pi * x.float()[:, None] * self.freqs[None]
        return torch.cat([angle.cos(), angle.sin()], dim=1)


class LabelEmbedding(nn.Module):
    """A learned vector per class plus one for "no class" (label -1, ``num_classes`` or ``cond=None``),
    the null label that classifier-free guidance trains on (Ho & Salimans 2022)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:  # (B,) or None -> (B, dim)
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        elif bool(((labels < -1) | (labels > self.num_classes)).any()):
            raise UndiffuseError(f"class labels must be in [-1, {self.num_classes}]; -1 and "
                                 f"{self.num_classes} mean 'no class'")
        return self.table(torch.where(labels < 0, self.num_classes, labels))


def noise_embedding(kind: str, dim: int) -> nn.Module:
    """The embedding of the noise level a backbone is told: "positional" (discrete t) or "fourier" (c_noise)."""
    if kind == "positional":
        return PositionalEmbedding(dim)
    if kind == "fourier":
        return FourierEmbedding(dim)
    raise UndiffuseError(f"unknown noise embedding {kind!r}; known: positional, fourier")


def check_text_cond(cond: object, batch: int, context_dim: int, net: str) -> dict[str, Tensor]:
    """A text condition for a batch: {"tokens": (B, L, D), "mask": (B, L), "pooled": (B, D)}, or a one-line error."""
    if not isinstance(cond, dict) or not {"tokens", "mask", "pooled"} <= set(cond):
        raise UndiffuseError(f"this {net} is text-conditioned: cond must be a dict with tokens, mask and pooled "
                             "(see undiffuse.text.TextEncoder)")
    tokens, mask, pooled = cond["tokens"], cond["mask"], cond["pooled"]
    if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != context_dim \
            or mask.shape != tokens.shape[:2] or pooled.shape != (batch, context_dim):
        raise UndiffuseError(f"text cond for a batch of {batch} needs tokens (B, L, {context_dim}), mask "
                             f"(B, L) and pooled (B, {context_dim}); got {tuple(tokens.shape)}, "
                             f"{tuple(mask.shape)}, {tuple(pooled.shape)}")
    return cond
