"""Spaces: where diffusion runs and how data gets there and back.

A space has the ``shape`` (C, H, W) of the samples x that the denoiser and the samplers see, and
``encode(images) -> x`` / ``decode(x) -> images`` for images in [-1, 1], and ``picture(x)``: what x looks like
as images (the image itself, the decoded latent, a coloured spectrogram). Pixels are the identity
(:class:`PixelSpace`); :class:`LatentSpace` is a trained autoencoder's latent grid scaled to unit
variance (Rombach et al. 2022, §3 and §4.3.2); :class:`SpectrogramSpace` is sound as a normalised log-mel
spectrogram, whose ``encode`` takes waves (N, L) and ``decode`` gives them back. Samplers, guidance and the
training loop never know which space they run in: training encodes the data once, sampling decodes at the end.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .latent import LatentSpace, build_autoencoder, load_autoencoder
from .pixels import PixelSpace
from .spectrogram import SpectrogramSpace


class Space(Protocol):
    """What a model's space offers: the shape of x and the way there and back."""

    kind: str

    @property
    def shape(self) -> tuple[int, int, int]: ...
    def encode(self, images: Tensor) -> Tensor: ...
    def decode(self, x: Tensor) -> Tensor: ...
    def picture(self, x: Tensor) -> Tensor: ...  # x as images (N, C, H, W) in [-1, 1], to look at


__all__ = ["LatentSpace", "PixelSpace", "Space", "SpectrogramSpace", "build_autoencoder", "load_autoencoder"]
