"""undiffuse models out: a trained U-Net as a diffusers DDPMPipeline folder (``unet/`` a ``UNet2DModel`` in
safetensors, ``scheduler/`` a DDPMScheduler config of the same chain and parameterisation), where the architecture
maps; otherwise one line saying what does not.

Our :class:`~undiffuse.nets.unet.UNet` is an ADM U-Net, and UNet2DModel with ``resnet_time_scale_shift =
"scale_shift"`` is the same network: sinusoidal t embedding ([cos, sin], ``flip_sin_to_cos``, no shift) → Linear,
SiLU, Linear (+ a class embedding); residual blocks with GroupNorm, SiLU, conv, AdaGN GN(h)·(1+s) + t (diffusers'
``norm2`` is affine: weight 1, bias 0 here), conv, and a 1×1 skip conv where the width changes; self-attention with
GroupNorm (``attn_norm_num_groups`` gives the middle one its norm too) and q, k, v split from our one 1×1 conv;
stride-2 conv down, nearest-neighbour + conv up. What does not map:

* a first level wider than ``model.channels`` (``channel_mult[0]`` ≠ 1): UNet2DModel's ``conv_in`` and t embedding
  are as wide as its first level, ours are ``model.channels`` wide and the first block widens them (a 1×1 skip conv
  and a GroupNorm over the narrower width, which no zero-padding reproduces). configs/fashion-mnist.toml's
  4-level 8·(2, 4, 8, 13) is such a net (the 32·(1, 2, 3) "fashion-mnist" shipped at the time of writing maps);
* attention blocks of different head widths (``model.num_heads`` heads at every width): UNet2DModel has one
  ``attention_head_dim``;
* text conditioning (UNet2DConditionModel's domain), video, DiT and MLP backbones, latent and spectrogram spaces,
  EDM and flow models (UNet2DModel pipelines are discrete VP chains).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import to_dict
from ..denoiser import VPDenoiser
from ..errors import UndiffuseError
from ..models import LoadedModel, load_model
from ..nets.blocks import AttentionBlock, Downsample, ResBlock, Upsample
from ..nets.unet import UNet
from . import import_diffusers
from .diffusers_load import SIDECAR

SCHEDULES = {"linear": ("linear", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012),
             "cosine": ("squaredcos_cap_v2", 1e-4, 0.02)}  # our make_betas defaults → diffusers' keys
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
CHECK_RTOL = 1e-4  # the exported net against ours on a probe batch (float32 rounding only)


def why_not(model: LoadedModel) -> list[str]:
    """What keeps ``model`` from mapping onto a UNet2DModel pipeline (empty: it maps)."""
    cfg, net = model.config, getattr(model.denoiser, "net", None)
    reasons = []
    if cfg.space.kind != "pixels" or cfg.data.frames:
        kind = "video" if cfg.data.frames else cfg.space.kind
        reasons.append(f"it runs in a {kind} space (a UNet2DModel pipeline is images in pixels)")
    if cfg.diffusion.parameterization not in PREDICTION_TYPES:
        reasons.append(f"diffusion.parameterization = {cfg.diffusion.parameterization!r} (a UNet2DModel pipeline "
                       "is a discrete VP chain: eps, x0 or v)")
    if type(net) is not UNet:
        reasons.append(f"model.backbone = {cfg.model.backbone!r} is not the image U-Net")
        return reasons
    if not isinstance(model.denoiser, VPDenoiser):
        return reasons  # EDM or flow: said above
    if net.context_dim:
        reasons.append("it is text-conditioned (cross-attention to a prompt: UNet2DConditionModel's domain)")
    if cfg.model.channel_mult[0] != 1:
        reasons.append(f"model.channel_mult[0] = {cfg.model.channel_mult[0]}, not 1 (UNet2DModel's conv_in and t "
                       f"embedding are as wide as its first level, {cfg.model.channels * cfg.model.channel_mult[0]}; "
                       f"ours are model.channels = {cfg.model.channels} wide)")
    head_dims = sorted({m.norm.num_channels // m.heads for m in net.modules() if isinstance(m, AttentionBlock)})
    if len(head_dims) > 1:
        reasons.append(f"its attention blocks have head widths {head_dims} (model.num_heads = {cfg.model.num_heads} "
                       "at widths that differ); UNet2DModel has one attention_head_dim")
    return reasons


def unet_config(model: LoadedModel) -> dict[str, Any]:
    """The UNet2DModel config of our U-Net (see the module docstring for the correspondence)."""
    cfg, net = model.config, model.denoiser.net
    m = cfg.model
    widths = [m.channels * k for k in m.channel_mult]
    sizes = [cfg.data.image_size // 2**i for i in range(len(widths))]
    attn = [s in m.attention_resolutions for s in sizes]
    head_dim = next(b.norm.num_channels // b.heads for b in net.modules() if isinstance(b, AttentionBlock))
    return dict(
        sample_size=cfg.data.image_size, in_channels=net.in_channels, out_channels=net.out_channels,
        center_input_sample=False, time_embedding_type="positional", freq_shift=0, flip_sin_to_cos=True,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        mid_block_type="UNetMidBlock2D",
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        block_out_channels=widths, layers_per_block=m.num_res_blocks, mid_block_scale_factor=1, downsample_padding=1,
        downsample_type="conv", upsample_type="conv", dropout=m.dropout, act_fn="silu", attention_head_dim=head_dim,
        norm_num_groups=m.groups, attn_norm_num_groups=m.groups, norm_eps=1e-5, resnet_time_scale_shift="scale_shift",
        add_attention=True, class_embed_type=None, num_class_embeds=net.num_classes + 1 if net.num_classes else None)


def _res(prefix: str, b: ResBlock) -> dict[str, Tensor]:
    out = {f"{prefix}.norm1.weight": b.norm1.weight, f"{prefix}.norm1.bias": b.norm1.bias,
           f"{prefix}.conv1.weight": b.conv1.weight, f"{prefix}.conv1.bias": b.conv1.bias,
           f"{prefix}.time_emb_proj.weight": b.emb.weight, f"{prefix}.time_emb_proj.bias": b.emb.bias,
           f"{prefix}.norm2.weight": torch.ones(b.norm2.num_channels),  # AdaGN's own affine is (1 + s, t)
           f"{prefix}.norm2.bias": torch.zeros(b.norm2.num_channels),
           f"{prefix}.conv2.weight": b.conv2.weight, f"{prefix}.conv2.bias": b.conv2.bias}
    if isinstance(b.skip, nn.Conv2d):
        out |= {f"{prefix}.conv_shortcut.weight": b.skip.weight, f"{prefix}.conv_shortcut.bias": b.skip.bias}
    return out


def _attn(prefix: str, b: AttentionBlock) -> dict[str, Tensor]:
    q, k, v = b.qkv.weight[:, :, 0, 0].chunk(3)   # (3C, C) → 3 × (C, C); head h is rows h·d … h·d + d-1 of each
    qb, kb, vb = b.qkv.bias.chunk(3)
    return {f"{prefix}.group_norm.weight": b.norm.weight, f"{prefix}.group_norm.bias": b.norm.bias,
            f"{prefix}.to_q.weight": q, f"{prefix}.to_q.bias": qb, f"{prefix}.to_k.weight": k,
            f"{prefix}.to_k.bias": kb, f"{prefix}.to_v.weight": v, f"{prefix}.to_v.bias": vb,
            f"{prefix}.to_out.0.weight": b.proj.weight[:, :, 0, 0], f"{prefix}.to_out.0.bias": b.proj.bias}


def _level(prefix: str, j: int, blocks: nn.ModuleList) -> dict[str, Tensor]:
    """One entry of our down/up path: a ResBlock, maybe attention, maybe a resampler, as resnets.j etc."""
    out: dict[str, Tensor] = {}
    for b in blocks:
        if isinstance(b, ResBlock):
            out |= _res(f"{prefix}.resnets.{j}", b)
        elif isinstance(b, AttentionBlock):
            out |= _attn(f"{prefix}.attentions.{j}", b)
        elif isinstance(b, Downsample | Upsample):
            kind = "downsamplers" if isinstance(b, Downsample) else "upsamplers"
            out |= {f"{prefix}.{kind}.0.conv.weight": b.conv.weight, f"{prefix}.{kind}.0.conv.bias": b.conv.bias}
        else:  # pragma: no cover (why_not refuses every other block)
            raise UndiffuseError(f"no UNet2DModel counterpart for {type(b).__name__}")
    return out


def unet_weights(net: UNet, levels: int, num_res_blocks: int) -> dict[str, Tensor]:
    """Our U-Net's weights under UNet2DModel's names (down_blocks.i.resnets.j…, mid_block…, up_blocks…)."""
    out = {"conv_in.weight": net.inp.weight, "conv_in.bias": net.inp.bias,
           "time_embedding.linear_1.weight": net.emb_mlp[0].weight, "time_embedding.linear_1.bias": net.emb_mlp[0].bias,
           "time_embedding.linear_2.weight": net.emb_mlp[2].weight, "time_embedding.linear_2.bias": net.emb_mlp[2].bias,
           "conv_norm_out.weight": net.out_norm.weight, "conv_norm_out.bias": net.out_norm.bias,
           "conv_out.weight": net.out.weight, "conv_out.bias": net.out.bias}
    if net.class_embed is not None:  # K classes + the "no class" row, as embeddings 0 … K
        out["class_embedding.weight"] = net.class_embed.table.weight
    down = iter(net.down)
    for i in range(levels):
        for j in range(num_res_blocks):
            out |= _level(f"down_blocks.{i}", j, next(down))
        if i < levels - 1:
            out |= _level(f"down_blocks.{i}", 0, next(down))
    mid = list(net.mid)
    out |= _res("mid_block.resnets.0", mid[0]) | _attn("mid_block.attentions.0", mid[1]) | \
        _res("mid_block.resnets.1", mid[2])
    up = iter(net.up)
    for u in range(levels):
        for j in range(num_res_blocks + 1):
            out |= _level(f"up_blocks.{u}", j, next(up))
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def scheduler_config(model: LoadedModel) -> dict[str, Any]:
    """DDPMScheduler settings of our chain and parameterisation; no clip_sample (our samplers do not clip unless
    asked), timestep spacing from the model card's grid where it is a uniform-t one."""
    d, grid = model.config.diffusion, model.config.sample.grid
    common = dict(num_train_timesteps=d.timesteps, prediction_type=PREDICTION_TYPES[d.parameterization],
                  clip_sample=False, variance_type="fixed_small",
                  timestep_spacing=grid if grid in ("leading", "trailing", "linspace") else "leading")
    if d.betas:
        return dict(common, trained_betas=list(d.betas))
    name, lo, hi = SCHEDULES[d.schedule]
    return dict(common, beta_schedule=name, beta_start=lo, beta_end=hi)


def _check_same(model: LoadedModel, unet: nn.Module) -> None:
    """The exported net computes what ours does on a probe batch, or the export stops (a mapping bug, never a user
    error: checked so that a wrong file is never written)."""
    net: UNet = model.denoiser.net
    g = torch.Generator().manual_seed(0)
    c, s = net.in_channels, model.config.data.image_size
    x = torch.randn(2, c, s, s, generator=g)
    t = torch.tensor([3.0, model.config.diffusion.timesteps * 0.7])
    labels = torch.tensor([0, net.num_classes]) if net.num_classes else None
    with torch.no_grad():
        ours = net(x, t, labels)
        theirs = unet(x, t, class_labels=labels).sample
    err = float((ours - theirs).abs().max() / ours.abs().max().clamp(min=1e-6))
    if not err <= CHECK_RTOL:
        raise UndiffuseError(f"the exported UNet2DModel differs from the model by {err:.2g} (relative): not written")


def export_diffusers(model: str | Path | LoadedModel, out: Path) -> Path:
    """Write ``model`` (a run folder, checkpoint or shipped name; its EMA weights) as a diffusers DDPMPipeline folder
    ``out`` plus ``undiffuse.json`` (class names, the "no class" label, data and sample settings), atomically;
    refuses in one line what does not map (:func:`why_not`) and an ``out`` that is not empty."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UndiffuseError(f"{out} exists and is not an empty folder: choose a new one")
    reasons = why_not(loaded)
    if reasons:
        raise UndiffuseError(f"{loaded.source} does not map onto a diffusers UNet2DModel: {'; '.join(reasons)}")
    diffusers = import_diffusers("undiffuse export --to diffusers")
    cfg, net = loaded.config, loaded.denoiser.net
    unet = diffusers.UNet2DModel(**unet_config(loaded))
    unet.load_state_dict(unet_weights(net, len(cfg.model.channel_mult), cfg.model.num_res_blocks), strict=True)
    unet.eval().requires_grad_(False)
    _check_same(loaded, unet)
    scheduler = diffusers.DDPMScheduler(**scheduler_config(loaded))
    side = {"source": loaded.source, "undiffuse_version": _version(),
            "class_names": loaded.class_names, "null_label": net.num_classes if net.num_classes else None,
            "config": {"name": cfg.name, "data": to_dict(cfg.data), "sample": to_dict(cfg.sample)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        (tmp / SIDECAR).write_text(json.dumps(side, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _version() -> str:
    from .. import __version__
    return __version__
