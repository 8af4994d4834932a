"""Latent space: a trained autoencoder's latents, scaled to unit variance (Rombach et al. 2022, §3, §4.3.2).

x = s·μ_φ(image), where μ_φ is the encoder's posterior mean and s the scale factor measured on the
training data when the autoencoder was exported (1/std of the latents; Stable Diffusion's 0.18215 was
measured the same way), so that the diffusion chain meets data of unit variance as in pixel space.
decode(x) = D_φ(x / s), clamped to [-1, 1].

A latent diffusion model carries its autoencoder inside its own file (tensors ``autoencoder.*``, its
config and scale in the metadata), so a shipped or copied model never depends on another folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import group, load_checkpoint, load_module_state, prefixed
from ..config import Config, config_from_json, to_dict
from ..errors import UndiffuseError
from ..model_files import resolve_model_path
from ..nets.autoencoder import Autoencoder


def build_autoencoder(cfg: Config) -> Autoencoder:
    """The autoencoder an autoencoder recipe (``model.backbone = "autoencoder"``) describes."""
    m = cfg.model
    return Autoencoder(in_channels=cfg.data.channels, latent_channels=m.latent_channels, channels=m.channels,
                       channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks, groups=m.groups)


@dataclass
class LatentSpace:
    """x = scale · encoder mean; images = decoder(x / scale). ``config`` is the autoencoder's own run config."""

    autoencoder: Autoencoder
    scale: float
    config: Config
    source: str = ""
    image_size: int = 0     # the images' side (0: the one the autoencoder trained on)
    kind: str = "latent"
    batch_size: int = 64

    def __post_init__(self):
        self.autoencoder.eval().requires_grad_(False)
        if not (self.scale > 0 and torch.isfinite(torch.tensor(self.scale))):
            raise UndiffuseError(f"autoencoder {self.source}: latent scale must be a positive number, got {self.scale}")
        self.image_size = self.image_size or self.config.data.image_size
        self.autoencoder.latent_shape(self.image_size)  # refuses sizes the down-sampling factor does not divide

    @property
    def factor(self) -> int:
        return self.autoencoder.factor

    def for_images(self, image_size: int, channels: int) -> LatentSpace:
        """This space for a diffusion model's images, refusing a channel count the autoencoder does not take."""
        if channels != self.image_channels:
            raise UndiffuseError(f"the autoencoder {self.source} codes {self.image_channels}-channel images, "
                                 f"the model's data.channels is {channels}")
        return replace(self, image_size=image_size)

    @property
    def image_channels(self) -> int:
        return self.config.data.channels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(self.image_size)

    @torch.no_grad()
    def encode(self, images: Tensor, progress: Callable[[int], Any] | None = None) -> Tensor:
        """(B, C, H, W) images in [-1, 1] → (B, c, H/f, W/f) scaled latents, in batches."""
        out = []
        for i in range(0, len(images), self.batch_size):
            mean, _ = self.autoencoder.encode(images[i:i + self.batch_size].float())
            out.append(mean * self.scale)
            if progress is not None:
                progress(len(out[-1]))
        return torch.cat(out) if out else images.new_zeros((0, *self.shape))

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """(B, c, h, w) scaled latents → (B, C, h·f, w·f) images in [-1, 1], in batches, fp32."""
        out = [self.autoencoder.decode(x[i:i + self.batch_size].float() / self.scale).clamp(-1, 1)
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out)

    def picture(self, x: Tensor) -> Tensor:
        """What x looks like: its decoded image."""
        return self.decode(x)

    def tensors(self) -> dict[str, Tensor]:
        """The autoencoder's weights, prefixed to travel inside a diffusion model's file."""
        return prefixed(self.autoencoder.state_dict(), "autoencoder")

    def meta(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "scale": self.scale, "source": self.source}


def latent_space_from(tensors: dict[str, Tensor], meta: dict[str, Any], what: str) -> LatentSpace:
    """The autoencoder a latent diffusion model carries (tensors ``autoencoder.*``, ``meta["autoencoder"]``)."""
    info = meta.get("autoencoder")
    weights = group(tensors, "autoencoder")
    if not isinstance(info, dict) or "config" not in info or "scale" not in info or not weights:
        raise UndiffuseError(f"{what} is a latent model but carries no autoencoder (tensors autoencoder.* and "
                             "its config and scale in the metadata)")
    cfg = config_from_json(json.dumps(info["config"]))
    ae = build_autoencoder(cfg)
    load_module_state(ae, weights, what=f"{what} (autoencoder)")
    return LatentSpace(ae, float(info["scale"]), cfg, source=str(info.get("source", "")))


def load_autoencoder(source: str) -> LatentSpace:
    """A trained autoencoder (run folder, model file or shipped name) as a latent space, or the one a latent
    diffusion model carries (so a model distilled from it, or fine-tuned, runs in the same space)."""
    path = resolve_model_path(source)
    tensors, meta = load_checkpoint(path)
    if "config" not in meta:
        raise UndiffuseError(f"{path} has no config in its metadata")
    cfg = config_from_json(json.dumps(meta["config"]))
    if cfg.model.backbone != "autoencoder" and isinstance(meta.get("autoencoder"), dict):
        return latent_space_from(tensors, meta, str(path))
    if cfg.model.backbone != "autoencoder":
        raise UndiffuseError(f"{source} is not an autoencoder (its model.backbone is {cfg.model.backbone!r})")
    if meta.get("latent_scale") is None:
        raise UndiffuseError(f"{path} has no measured latent scale: it is an unfinished autoencoder run; train it to "
                             "the end (its model.safetensors has the scale)")
    ae = build_autoencoder(cfg)
    load_module_state(ae, group(tensors, "ema") or group(tensors, "model"), what=str(path))
    return LatentSpace(ae, float(meta["latent_scale"]), cfg, source=str(source))
