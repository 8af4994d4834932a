"""Backbones: networks ``F(x_in, noise_cond, cond)`` that a preconditioning wrapper turns into a denoiser."""

from .layers import FourierEmbedding, LabelEmbedding, PositionalEmbedding
from .mlp import MLP

__all__ = ["MLP", "FourierEmbedding", "LabelEmbedding", "PositionalEmbedding"]
