"""Pixel space: diffusion runs on the images themselves (DDPM, ADM, EDM)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PixelSpace:
    """The identity space: x is the image, (C, H, W) in [-1, 1]."""

    image_shape: tuple[int, int, int]
    kind: str = "pixels"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, x: Tensor) -> Tensor:
        return x

    def picture(self, x: Tensor) -> Tensor:
        return x
