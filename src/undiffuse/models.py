"""From a config to a network, its denoiser and its training noise density; loading trained models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import process
from .checkpoint import group, load_checkpoint, load_module_state
from .config import Config, config_from_json
from .denoiser import Denoiser, EDMDenoiser, FlowDenoiser, VPDenoiser
from .errors import UndiffuseError
from .model_files import resolve_model_path
from .spaces import PixelSpace, Space, build_autoencoder, load_autoencoder

def build_schedule(cfg: Config) -> process.DiscreteSchedule | None:
    """The discrete VP chain of a VP model (None for EDM and flow, which are continuous in σ)."""
    if cfg.diffusion.parameterization in ("edm", "flow"):
        return None
    if cfg.diffusion.betas:  # a chain given step by step (e.g. a diffusers model's trained betas)
        return process.DiscreteSchedule(torch.tensor(cfg.diffusion.betas, dtype=torch.float64))
    return process.DiscreteSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.timesteps)


def build_space(cfg: Config, tensors: dict[str, Tensor] | None = None, meta: dict[str, Any] | None = None,
                what: str = "the model") -> Space:
    """Where the model's diffusion runs: pixels, a sound's log-mel spectrogram, or the latents of the autoencoder the
    config names (or the one a trained latent model carries in ``tensors`` / ``meta``)."""
    if cfg.space.kind == "pixels" and cfg.data.frames:
        from .spaces.video import VideoSpace
        return VideoSpace(cfg.data.frames, cfg.data.channels, cfg.data.image_size)
    if cfg.space.kind == "pixels":
        return PixelSpace((cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
    if cfg.space.kind == "spectrogram":
        from .spaces.spectrogram import spectrogram_space
        return spectrogram_space(cfg)
    from .spaces.latent import latent_space_from
    space = latent_space_from(tensors, meta or {}, what) if tensors is not None else \
        load_autoencoder(cfg.space.autoencoder)
    return space.for_images(cfg.data.image_size, cfg.data.channels)


def build_net(cfg: Config, num_classes: int, dim: int | None = None, context_dim: int = 0,
              shape: tuple[int, ...] | None = None) -> nn.Module:
    """The backbone F_θ; ``num_classes`` = 0 for an unconditional model, ``dim`` for vector data,
    ``context_dim`` for a text-conditioned net (the text encoder's width), ``shape`` (C, H, W) of the space
    it runs in (default: the config's pixels; (frames, C, H, W) for video: the space-time U-Net)."""
    m = cfg.model
    embedding = "fourier" if cfg.diffusion.parameterization == "edm" else "positional"
    if m.backbone == "mlp":
        from .nets.mlp import MLP
        return MLP(dim=dim or 2, width=m.channels, depth=m.mlp_depth, noise_embedding=embedding,
                   num_classes=num_classes)
    if m.backbone == "autoencoder":
        return build_autoencoder(cfg)
    shape = shape or (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    frames = shape[0] if len(shape) == 4 else 0
    channels, size, _ = shape[-3:]
    if m.backbone == "dit":
        from .nets.dit import DiT, dit_size
        return DiT(in_channels=channels, image_size=size, patch_size=m.patch_size, **dit_size(m.dit_size),
                   dropout=m.dropout, num_classes=num_classes, context_dim=context_dim, noise_embedding=embedding,
                   text_attention=m.text_attention)
    unet = dict(in_channels=channels, image_size=size, channels=m.channels, channel_mult=tuple(m.channel_mult),
                num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
                dropout=m.dropout, num_heads=m.num_heads, groups=m.groups, num_classes=num_classes,
                noise_embedding=embedding, context_dim=context_dim)
    if frames:
        from .nets.video_unet import VideoUNet
        return VideoUNet(frames=frames, temporal=m.temporal, temporal_heads=m.num_heads, **unet)
    from .nets.unet import UNet
    return UNet(**unet)


def build_denoiser(cfg: Config, net: nn.Module) -> Denoiser:
    """Wrap the backbone in its preconditioning (VP ε/x0/v on discrete t, EDM, or a flow velocity on 1000·t)."""
    if cfg.diffusion.parameterization == "edm":
        return EDMDenoiser(net, sigma_data=cfg.diffusion.sigma_data)
    if cfg.diffusion.parameterization == "flow":
        return FlowDenoiser(net)
    return VPDenoiser(net, cfg.diffusion.parameterization, schedule=build_schedule(cfg))


def training_sigmas(cfg: Config, schedule: process.DiscreteSchedule | None, n: int,
                    generator: torch.Generator) -> Tensor:
    """σ's drawn from the training density: σ_t with t uniform (DDPM), EDM's log-normal, or for flow SD3's
    logit-normal t with the resolution shift (:func:`~undiffuse.process.sample_sigma_logit_normal`)."""
    d = cfg.diffusion
    if d.parameterization == "flow":
        return process.sample_sigma_logit_normal(n, d.flow_logit_mean, d.flow_logit_std, d.flow_shift, generator)
    if schedule is None:
        return process.sample_sigma_lognormal(n, cfg.diffusion.p_mean, cfg.diffusion.p_std, generator)
    return schedule.sigmas[process.sample_t_uniform(schedule, n, generator)]


def sigma_range(cfg: Config) -> tuple[float, float]:
    """(σ_min, σ_max) to sample over: the chain's ends, EDM's 0.002 … 80, or for flow t ∈ [10⁻³, 0.99]
    (σ ≈ 0.001 … 99, times ``diffusion.flow_shift``: :data:`~undiffuse.process.FLOW_T_RANGE`)."""
    if cfg.diffusion.parameterization == "flow":
        return process.flow_sigma_range(cfg.diffusion.flow_shift)
    schedule = build_schedule(cfg)
    return (schedule.sigma_min, schedule.sigma_max) if schedule else (0.002, 80.0)


def config_sigmas(cfg: Config, steps: int, grid: str | None = None, sigma_min: float | None = None,
                  sigma_max: float | None = None, rho: float = 7.0) -> Tensor:
    """A sampling grid (default: the config's ``sample.grid``) over the model's σ range (on a discrete chain σ_max
    capped at :data:`~undiffuse.process.GRID_SIGMA_MAX`), or over [sigma_min, sigma_max] where given (karras,
    exponential and flow grids; ``rho``: the Karras exponent). A flow model's ``flow`` grid is spaced as diffusers'
    FlowMatchEuler timesteps with the model's ``diffusion.flow_shift``; a distilled model's ``distilled`` grid visits
    the levels it was trained at (:func:`~undiffuse.process.distilled_sigmas`)."""
    if (grid or cfg.sample.grid) == process.DISTILLED_GRID:
        if sigma_min is not None or sigma_max is not None:
            raise UndiffuseError("the 'distilled' grid is the levels the model was distilled at: it takes no σ range")
        return process.distilled_sigmas(cfg.distill.sigmas, steps)
    schedule = build_schedule(cfg)
    if schedule is None:  # a continuous-σ model: its own range (EDM's, or flow's) unless given
        lo, hi = sigma_range(cfg)
        sigma_min, sigma_max = lo if sigma_min is None else sigma_min, hi if sigma_max is None else sigma_max
    shift = cfg.diffusion.flow_shift if cfg.diffusion.parameterization == "flow" else 1.0
    return process.sigma_grid(grid or cfg.sample.grid, steps, schedule=schedule, sigma_min=sigma_min,
                              sigma_max=sigma_max, rho=rho, shift=shift)


@dataclass
class LoadedModel:
    """A trained model ready to sample: its EMA denoiser, config and metadata."""

    denoiser: Denoiser
    config: Config
    class_names: list[str]
    source: str
    meta: dict[str, Any]
    space: Space | None = None  # where it samples (None: pixels of the config's size)

    def __post_init__(self):
        if self.space is None:
            d = self.config.data
            self.space = PixelSpace((d.channels, d.image_size, d.image_size))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def text_conditioned(self) -> bool:
        return bool(self.meta.get("context_dim"))

    def text_encoder(self):
        """The frozen text encoder this model was trained with (loaded once)."""
        if not self.text_conditioned:
            raise UndiffuseError(f"{self.source} is not text-conditioned: it takes no prompt")
        if getattr(self, "_encoder", None) is None:
            from .text import TextEncoder
            self._encoder = TextEncoder(max_length=self.config.data.text_length)
        return self._encoder

    def sigmas(self, steps: int, grid: str | None = None, sigma_min: float | None = None,
               sigma_max: float | None = None, rho: float = 7.0) -> Tensor:
        """A sampling grid for this model: :func:`config_sigmas` of its config."""
        return config_sigmas(self.config, steps, grid, sigma_min, sigma_max, rho)


def load_model(model: str | Path) -> LoadedModel:
    """Load the EMA weights of a run, checkpoint, exported model or shipped model (safetensors + JSON), or a folder
    saved by diffusers' ``save_pretrained`` (:mod:`undiffuse.interop.diffusers_load`)."""
    from .interop.diffusers_load import is_diffusers_folder, load_diffusers
    if is_diffusers_folder(model):
        return load_diffusers(model)
    path = resolve_model_path(model)
    tensors, meta = load_checkpoint(path)
    if "config" not in meta:
        side = path.parent / "config.json"
        if not side.is_file():
            raise UndiffuseError(f"{path} has no config in its metadata and no config.json beside it")
        meta = {**json.loads(side.read_text()), **meta}
    cfg = config_from_json(json.dumps(meta["config"]))
    if cfg.model.backbone == "autoencoder":
        raise UndiffuseError(f"{model} is an autoencoder, not a diffusion model: name it as space.autoencoder "
                             "in a diffusion recipe")
    class_names = list(meta.get("class_names", []))
    space = build_space(cfg, tensors, meta, what=str(path)) if meta.get("dim") is None else None
    net = build_net(cfg, len(class_names), dim=meta.get("dim"), context_dim=int(meta.get("context_dim") or 0),
                    shape=space.shape if space is not None else None)
    weights = group(tensors, "ema") or group(tensors, "model")
    load_module_state(net, weights, what=str(path))
    net.eval().requires_grad_(False)
    return LoadedModel(build_denoiser(cfg, net), cfg, class_names, str(model), meta, space)
