"""A space-time U-Net for video: F(x_in, noise_cond, cond) on clips (B, frames, C, H, W).

Factorised as in Video Diffusion Models (Ho et al. 2022, §3) and Make-A-Video / AnimateDiff: the image U-Net's
layers run on every frame on its own (the frames folded into the batch), and after every block of it a temporal
layer mixes each pixel's features across the frames: self-attention over time (with a sinusoidal frame-position
embedding) or a 1-D convolution over time, or both. Every temporal layer is a residual branch whose output
projection starts at zero, so at initialisation the video net is the image net applied frame by frame: a trained
image model is inflated into a video model by loading its weights into ``image`` (:func:`inflate`).

``temporal_mask`` (B,) switches the temporal layers off per clip (0): a still image given as a clip is then
denoised exactly as the image model would, frame by frame, which is how images and videos train together. A
one-frame clip skips them too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import UndiffuseError
from .blocks import zero_
from .cpu import attention_fp32
from .unet import UNet

Temporal = Literal["attention", "conv", "both"]


def frame_positions(frames: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(frames, dim) sinusoidal embedding of the frame index (Vaswani et al. 2017, §3.5)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=device) / max(half, 1))
    angles = torch.arange(frames, device=device)[:, None].float() * freqs[None]
    pos = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(pos, (0, dim - pos.shape[1]))


def _masked(out: Tensor, mask: Tensor | None, frames: int) -> Tensor:
    return out if mask is None else out * mask.to(out.dtype).repeat_interleave(frames)[:, None, None, None]


class TemporalAttention(nn.Module):
    """h + proj(MHA over the frames of each pixel(GN h + frame position)); zero-initialised projection."""

    def __init__(self, ch: int, groups: int, heads: int):
        super().__init__()
        if ch % heads:
            raise UndiffuseError(f"temporal attention: width {ch} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_(nn.Linear(ch, ch))

    def forward(self, h: Tensor, frames: int, mask: Tensor | None = None) -> Tensor:  # (B·F, C, H, W)
        bf, c, hh, ww = h.shape
        b = bf // frames
        t = self.norm(h).reshape(b, frames, c, hh * ww).permute(0, 3, 1, 2)             # (B, HW, F, C)
        t = t + frame_positions(frames, c, h.device).to(t.dtype)
        q, k, v = self.qkv(t).reshape(b * hh * ww, frames, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = attention_fp32(q, k, v).to(t.dtype)                                          # (BHW, heads, F, d)
        a = a.transpose(1, 2).reshape(b, hh * ww, frames, c)
        out = self.proj(a).permute(0, 2, 3, 1).reshape(bf, c, hh, ww)
        return h + _masked(out, mask, frames)


class TemporalConv(nn.Module):
    """h + conv1d over the frames of each pixel(SiLU(GN h)), kernel 3, zero-initialised (VDM's factorised conv)."""

    def __init__(self, ch: int, groups: int, kernel: int = 3):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.conv = zero_(nn.Conv1d(ch, ch, kernel, padding=kernel // 2))

    def forward(self, h: Tensor, frames: int, mask: Tensor | None = None) -> Tensor:
        bf, c, hh, ww = h.shape
        b = bf // frames
        t = F.silu(self.norm(h)).reshape(b, frames, c, hh * ww).permute(0, 3, 2, 1).reshape(b * hh * ww, c, frames)
        out = self.conv(t).reshape(b, hh * ww, c, frames).permute(0, 3, 2, 1).reshape(bf, c, hh, ww)
        return h + _masked(out, mask, frames)


class TemporalMix(nn.Module):
    """The temporal layers after one block of the image net: attention, convolution or both."""

    def __init__(self, ch: int, groups: int, heads: int, kind: Temporal):
        super().__init__()
        self.layers = nn.ModuleList(([TemporalConv(ch, groups)] if kind in ("conv", "both") else [])
                                    + ([TemporalAttention(ch, groups, heads)] if kind in ("attention", "both")
                                       else []))

    def forward(self, h: Tensor, frames: int, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            h = layer(h, frames, mask)
        return h


class VideoUNet(nn.Module):
    """The image U-Net of ``unet_kwargs`` per frame, with temporal layers after every block.

    ``temporal``: "attention" (over all frames), "conv" (3 neighbouring frames per layer), or "both";
    ``temporal_heads``: heads of the temporal attention. Conditions (a class or a text) hold for the whole clip.
    """

    def __init__(self, frames: int, temporal: Temporal = "attention", temporal_heads: int = 4, **unet_kwargs):
        super().__init__()
        if temporal not in ("attention", "conv", "both"):
            raise UndiffuseError(f"temporal must be attention, conv or both, got {temporal!r}")
        if frames < 1:
            raise UndiffuseError(f"frames must be positive, got {frames}")
        self.frames, self.kind = frames, temporal
        self.image = UNet(**unet_kwargs)
        self.in_channels, self.out_channels = self.image.in_channels, self.image.out_channels
        self.num_classes, self.context_dim = self.image.num_classes, self.image.context_dim
        groups = unet_kwargs.get("groups", 32)
        self.temporal = nn.ModuleList(TemporalMix(ch, groups, temporal_heads, temporal)
                                      for ch in self._block_widths(unet_kwargs.get("image_size", 32)))

    def _block_widths(self, size: int) -> list[int]:
        """The channel count after each block of the image net (read off one dry run at ``size``)."""
        widths: list[int] = []

        def record(i: int, h: Tensor) -> Tensor:
            widths.append(h.shape[1])
            return h

        cond = None
        if self.context_dim:
            cond = {"tokens": torch.zeros(1, 1, self.context_dim), "mask": torch.ones(1, 1, dtype=torch.bool),
                    "pooled": torch.zeros(1, self.context_dim)}
        with torch.no_grad():
            self.image(torch.zeros(1, self.in_channels, size, size), torch.zeros(1), cond, mix=record)
        return widths

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Tensor | dict[str, Tensor] | None = None,
                temporal_mask: Tensor | None = None) -> Tensor:
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise UndiffuseError(f"this video UNet takes clips (batch, frames, {self.in_channels}, H, W), got "
                                 f"{tuple(x.shape)}")
        b, f = x.shape[:2]
        noise_cond = noise_cond.reshape(-1)
        if len(noise_cond) not in (1, b):
            raise UndiffuseError(f"noise_cond has {len(noise_cond)} values for a batch of {b} clips")
        per_frame = noise_cond.expand(b).repeat_interleave(f)
        if isinstance(cond, Tensor):
            cond = cond.reshape(-1).expand(b).repeat_interleave(f)
        elif isinstance(cond, dict):
            cond = {k: v.repeat_interleave(f, dim=0) for k, v in cond.items()}
        mix = None if f == 1 else (lambda i, h: self.temporal[i](h, f, temporal_mask))
        out = self.image(x.reshape(b * f, *x.shape[2:]), per_frame, cond, mix=mix)
        return out.reshape(b, f, *out.shape[1:])


def inflate(video: VideoUNet, image_state: dict[str, Tensor]) -> None:
    """Load a trained image U-Net's weights into ``video.image`` (strict: the same architecture); the temporal
    layers keep their zero-initialised outputs, so the video net starts as the image net per frame."""
    missing, unexpected = video.image.load_state_dict(image_state, strict=False)
    if missing or unexpected:
        raise UndiffuseError(f"the image model does not match the video net's image layers: "
                             f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
                             f"(e.g. {unexpected[:1]})")
