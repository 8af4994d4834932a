"""Video in pixel space: x is a clip (frames, C, H, W) in [-1, 1], every pixel of every frame its own noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class VideoSpace:
    """The identity space of clips; ``picture`` lays a clip's frames side by side (a film strip)."""

    frames: int
    channels: int
    size: int
    kind: str = "video"
    gap: int = 1  # pixels between frames in a strip (white)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.channels, self.size, self.size)

    def encode(self, clips: Tensor) -> Tensor:
        return clips

    def decode(self, x: Tensor) -> Tensor:
        return x

    def picture(self, x: Tensor) -> Tensor:
        """(N, F, C, H, W) → (N, C, H, F·W + (F−1)·gap): the frames left to right."""
        n, f, c, h, w = x.shape
        strip = torch.ones(n, c, h, f * w + (f - 1) * self.gap, dtype=x.dtype, device=x.device)
        for i in range(f):
            strip[..., i * (w + self.gap):i * (w + self.gap) + w] = x[:, i]
        return strip
