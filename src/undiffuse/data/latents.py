"""A training set encoded once into a latent space, cached on disk (latent diffusion, Rombach et al. 2022).

Every image becomes s·μ_φ(image) (and, with flips on, the latent of its mirror image too: a conv
encoder's latent of a flipped image is not exactly the flipped latent). The cache is keyed by the
autoencoder's weights, its scale and the data config, so a changed autoencoder or data set never
reuses stale latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, to_dict
from ..errors import UndiffuseError
from ..spaces.latent import LatentSpace

log = logging.getLogger(__name__)


@dataclass
class LatentTrainingData:
    """The trainer's view of an image set in a latent space: ``batch`` returns (latents, labels or captions)."""

    inner: object          # ImageTrainingData or TextImageData, its own flips turned off
    latents: Tensor        # (N, c, h, w) float32
    flipped: Tensor | None  # (N, c, h, w): latents of the mirrored images, when the run flips
    dim: None = None

    def __len__(self) -> int:
        return len(self.latents)

    def __getattr__(self, name: str):  # class names, caption tables, the null prompt: the inner set's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def batch(self, indices: Tensor, generator: torch.Generator):
        z = self.latents[indices]
        if self.flipped is not None:
            flip = torch.rand(len(indices), generator=generator) < 0.5
            z = torch.where(flip[:, None, None, None], self.flipped[indices], z)
        _, labels = self.inner.batch(indices, generator)
        return z, labels


def _key(space: LatentSpace, cfg: Config) -> str:
    h = hashlib.sha256()
    for name, t in sorted(space.autoencoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({"scale": space.scale, "data": to_dict(cfg.data)}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    from .emoji import data_root
    return data_root() / "latents"


def encode_training_data(data, space: LatentSpace, cfg: Config, progress: bool = True) -> LatentTrainingData:
    """Encode every training image once (cached under ``cache_dir()``); the run draws latents from then on."""
    images = getattr(data, "data", None)
    if images is None or not hasattr(images, "images"):
        raise UndiffuseError(f"data.name = {cfg.data.name!r} has no images to encode into a latent space")
    flip = bool(getattr(data, "flip", False))
    path = cache_dir() / f"{cfg.data.name.replace('+', '-')}-{_key(space, cfg)}.safetensors"
    latents = flipped = None
    if path.is_file():
        try:
            tensors, _ = load_checkpoint(path)
            latents, flipped = tensors["latents"], tensors.get("flipped")
            if len(latents) != len(images) or tuple(latents.shape[1:]) != space.shape or (flip and flipped is None):
                latents = None
        except (UndiffuseError, KeyError):
            latents = None
        if latents is None:
            log.warning("ignoring a latent cache that does not fit: %s", path)
    if latents is None:
        n = len(images) * (2 if flip else 1)
        with tqdm(total=n, disable=not progress, desc="encoding the data", unit="img", leave=False) as bar:
            x = images.batch(slice(None))
            latents = space.encode(x, progress=bar.update)
            flipped = space.encode(x.flip(-1), progress=bar.update) if flip else None
        try:
            save_checkpoint(path, {"latents": latents, **({"flipped": flipped} if flip else {})},
                            {"autoencoder": space.source, "data": to_dict(cfg.data)})
        except UndiffuseError as err:  # a cache that cannot be written costs time next run, never the run
            log.warning("could not cache the latents in %s: %s", path, err)
    data.flip = False
    return LatentTrainingData(data, latents, flipped if flip else None)
