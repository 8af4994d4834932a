"""Exponential moving average of a model's weights, the copy that is sampled from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← β θ_ema + (1 - β) θ after each step, with β warmed up as min(decay, (1+n)/(10+n)).

    The warm-up keeps early averages from being dominated by the random initialisation
    (as in TensorFlow's ExponentialMovingAverage with num_updates).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        beta = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for p_ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - beta)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
