"""Text conditioning: a frozen pretrained sentence encoder and its cached embeddings."""

from .encoder import TextEmbedding, TextEncoder, cached_embeddings

__all__ = ["TextEmbedding", "TextEncoder", "cached_embeddings"]
