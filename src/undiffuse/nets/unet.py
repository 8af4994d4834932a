"""An ADM-style U-Net for images: F(x_in, noise_cond, cond) -> (B, C_out, H, W).

The DDPM/ADM line (Ho et al. 2020, App. B; Dhariwal & Nichol 2021, §3): residual blocks with
GroupNorm + SiLU, the noise level (and class) injected into every block by AdaGN scale-shift,
multi-head self-attention at chosen resolutions, skip connections from the down path to the up
path. For training on a CPU wrap the forward pass in :func:`undiffuse.nets.cpu.train_autocast`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import UndiffuseError
from .blocks import AttentionBlock, CrossAttentionBlock, Downsample, ResBlock, Upsample, zero_
from .layers import LabelEmbedding, check_text_cond
from .layers import noise_embedding as noise_embedding_layer


class UNet(nn.Module):
    """F(x_in, noise_cond, cond) for images (B, in_channels, H, W), with an optional class label.

    ``noise_embedding``: "positional" for a discrete step t ∈ [0, T) (VPDenoiser with a schedule),
    "fourier" for a continuous c_noise such as ¼ ln σ (EDMDenoiser, VPDenoiser without one).
    ``cond``: None (all samples unconditional) or labels (B,) in [0, num_classes), where -1 (or
    ``num_classes``) is the "no class" token that classifier-free guidance trains on. With
    ``context_dim`` > 0 the net is text-conditioned and ``cond`` is a dict of the prompt's token
    embeddings "tokens" (B, L, context_dim), their "mask" (B, L) and the "pooled" embedding (B,
    context_dim): the pooled one joins the noise embedding, the tokens are cross-attended to after
    every self-attention block.
    ``image_size`` is the size the config is checked against; any H, W divisible by
    2**(len(channel_mult)-1) works in forward. ``attention_resolutions`` are feature-map sizes
    for ``image_size``; for other input sizes attention stays at the same levels.
    The defaults (6.94 M parameters, 2.89 GFLOP per 32×32 grayscale image) are sized for
    Fashion-MNIST on a CPU; attention only at 8×8: adding it at 16×16 costs 21 % of the training
    throughput (bench/README.md).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        image_size: int = 32,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (8,),
        dropout: float = 0.1,
        head_dim: int = 64,
        num_heads: int | None = None,
        num_classes: int = 0,
        noise_embedding: Literal["positional", "fourier"] = "positional",
        groups: int = 32,
        conv_downsample: bool = True,
        context_dim: int = 0,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        levels = len(channel_mult)
        factor = 2 ** (levels - 1)
        widths = [channels * m for m in channel_mult]
        if in_channels < 1 or out_channels < 1 or channels < 1 or levels < 1 or num_res_blocks < 1:
            raise UndiffuseError("in/out channels, channels, channel_mult and num_res_blocks must be positive")
        if image_size % factor:
            raise UndiffuseError(f"image_size {image_size} is not divisible by 2**(len(channel_mult)-1) = {factor}")
        if any(w % groups for w in (channels, *widths)):  # the stem's width too: its skip is normalised
            raise UndiffuseError(f"channel widths {[channels, *widths]} (channels, then channels × channel_mult) must "
                                 f"all be divisible by the GroupNorm groups ({groups})")
        sizes = [image_size // 2**i for i in range(levels)]
        unknown = sorted(set(attention_resolutions) - set(sizes))
        if unknown:
            raise UndiffuseError(f"attention_resolutions {unknown} are not feature-map sizes of this net: {sizes}")
        attn_levels = {i for i, s in enumerate(sizes) if s in attention_resolutions}
        att_widths = [widths[i] for i in attn_levels] + [widths[-1]]
        if num_heads is not None:
            if any(w % num_heads for w in att_widths):
                raise UndiffuseError(f"attention widths {att_widths} must be divisible by num_heads={num_heads}")
            head_dim_of = {w: w // num_heads for w in att_widths}
        else:
            if any(w % head_dim for w in att_widths):
                raise UndiffuseError(f"attention widths {att_widths} must be divisible by head_dim={head_dim}")
            head_dim_of = {w: head_dim for w in att_widths}
        if not 0 <= dropout < 1:
            raise UndiffuseError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 0 or context_dim < 0 or (num_classes and context_dim):
            raise UndiffuseError(f"a UNet takes classes or text, not both: num_classes={num_classes}, "
                                 f"context_dim={context_dim}")

        self.in_channels, self.out_channels, self.factor = in_channels, out_channels, factor
        self.num_classes, self.context_dim = num_classes, context_dim
        emb_dim = 4 * channels

        # Noise level (and class) -> one embedding vector per sample, shared by every block.
        self.noise_embed = noise_embedding_layer(noise_embedding, channels)
        self.emb_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        self.text_embed = nn.Linear(context_dim, emb_dim) if context_dim else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, groups, dropout)

        def attn(ch: int) -> list[nn.Module]:
            blocks: list[nn.Module] = [AttentionBlock(ch, groups, head_dim_of[ch])]
            if context_dim:
                blocks.append(CrossAttentionBlock(ch, groups, head_dim_of[ch], context_dim))
            return blocks

        # Down path: each level's blocks push a skip; every level but the last ends in a downsample.
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, w)] + (attn(w) if i in attn_levels else [])))
                ch = w
                skips.append(ch)
            if i < levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch, conv_downsample)]))
                skips.append(ch)

        self.mid = nn.ModuleList([res(ch, ch), *attn(ch), res(ch, ch)])

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip; then an upsample.
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for j in range(num_res_blocks + 1):
                block = [res(ch + skips.pop(), w)] + (attn(w) if i in attn_levels else [])
                ch = w
                if i > 0 and j == num_res_blocks:
                    block.append(Upsample(ch))
                self.up.append(nn.ModuleList(block))

        self.out_norm = nn.GroupNorm(groups, ch)
        # Zero output: the net starts as F ≡ 0, so the denoiser starts as its skip path (EDM, DiT).
        self.out = zero_(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Tensor | dict[str, Tensor] | None = None,
                mix: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """``mix(i, h)``, where given, is applied to the features after block i of the down path, the middle and
        the up path in turn (a video net's temporal layers: :class:`~undiffuse.nets.video_unet.VideoUNet`)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UndiffuseError(f"this UNet takes images (batch, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise UndiffuseError(f"image size {tuple(x.shape[2:])} is not divisible by {self.factor}")
        noise_cond = noise_cond.reshape(-1)
        if len(noise_cond) not in (1, len(x)):
            raise UndiffuseError(f"noise_cond has {len(noise_cond)} values for a batch of {len(x)}")
        emb = self.emb_mlp(self.noise_embed(noise_cond.expand(len(x))))                 # (B, E)
        text = None
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond, len(x))
        elif self.text_embed is not None:
            text = check_text_cond(cond, len(x), self.context_dim, "UNet")
            emb = emb + self.text_embed(text["pooled"].to(emb.dtype))
        elif cond is not None:
            raise UndiffuseError("this UNet is unconditional (num_classes=0) but got a class label")
        emb = F.silu(emb)                                                                # (B, E)

        mix = mix or (lambda i, h: h)
        h = self.inp(x)                                                                  # (B, C, H, W)
        skips = [h]
        for i, block in enumerate(self.down):
            h = mix(i, self._run(block, h, emb, text))
            skips.append(h)
        h = mix(len(self.down), self._run(self.mid, h, emb, text))                       # (B, C·m, H/f, W/f)
        for i, block in enumerate(self.up, len(self.down) + 1):
            h = mix(i, self._run(block, torch.cat([h, skips.pop()], dim=1), emb, text))
        return self.out(F.silu(self.out_norm(h))).to(x.dtype)                            # (B, C_out, H, W)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: Tensor, emb: Tensor, text: dict[str, Tensor] | None) -> Tensor:
        for b in blocks:
            if isinstance(b, ResBlock):
                h = b(h, emb)
            elif isinstance(b, CrossAttentionBlock):
                h = b(h, text["tokens"], text["mask"])
            else:
                h = b(h)
        return h
