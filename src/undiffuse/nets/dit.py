"""A Diffusion Transformer for images: F(x_in, noise_cond, cond) -> (B, C_out, H, W).

DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): the image is cut into
p×p patches, each a token with a fixed 2-D sin-cos position; transformer blocks are conditioned on
the noise level (and class) by adaLN-Zero, a per-block scale/shift/gate regressed from the
conditioning vector and zero-initialised so every block starts as the identity. Text conditioning is
one of two (``text_attention``):

- "cross", PixArt-α (Chen et al. 2023): a cross-attention to the prompt's tokens after each
  self-attention, its output projection zero-initialised too.
- "joint", SD3's MM-DiT (Esser et al. 2024, "Scaling Rectified Flow Transformers"): the prompt's tokens,
  projected to the width once, form a second stream with its own adaLN-Zero, qkv, output projection and
  MLP in every block; one attention runs over [image tokens; text tokens], the padding masked out as keys.

Same call convention as :class:`undiffuse.nets.unet.UNet`; attention is two batched matmuls with an fp32
softmax (:func:`undiffuse.nets.cpu.attention_short`), the linears under bf16 autocast when the caller enables it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import UndiffuseError
from .blocks import Dropout, zero_
from .cpu import attention_short
from .layers import LabelEmbedding, check_text_cond
from .layers import noise_embedding as noise_embedding_layer

DIT_SIZES: dict[str, dict] = {
    "T": dict(depth=4, width=128, heads=2),     # tiny, for tests
    "XS": dict(depth=6, width=256, heads=4),
    "M": dict(depth=12, width=256, heads=4),    # DiT-S depth at 2/3 its width: sized for a CPU
    "S": dict(depth=12, width=384, heads=6),    # DiT-S
    "B": dict(depth=12, width=768, heads=12),   # DiT-B
}
FREQ_DIM = 256  # sinusoid features of the noise level fed to the conditioning MLP (as in DiT)
TEXT_ATTENTIONS = ("cross", "joint")  # PixArt-α cross-attention | SD3 joint attention


def dit_size(name: str) -> dict:
    """depth, width and heads of a named DiT size (a copy, safe to edit)."""
    if name not in DIT_SIZES:
        raise UndiffuseError(f"unknown DiT size {name!r}; known: {', '.join(DIT_SIZES)}")
    return dict(DIT_SIZES[name])


@functools.lru_cache(maxsize=16)
def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed position embeddings of an h×w token grid, (h·w, dim), row-major: the first dim/2
    features are sinusoids of the row index, the last dim/2 of the column index."""
    f64 = dict(dtype=torch.float64, device="cpu")  # explicit: a cached tensor must not follow a device context
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(dim // 4, **f64) / (dim // 4))

    def embed(pos: Tensor) -> Tensor:  # (n,) -> (n, dim/2)
        angle = pos[:, None] * freqs[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h, **f64), torch.arange(w, **f64), indexing="ij")
    return torch.cat([embed(rows.reshape(-1)), embed(cols.reshape(-1))], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift, (B, N, D) with (B, 1, D) per-sample parameters."""
    return x * (1 + scale) + shift


def layer_norm(width: int) -> nn.LayerNorm:
    """LayerNorm without affine: the adaLN modulation (or the next Linear) supplies it."""
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


def mlp(width: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    """The transformer MLP: Linear, tanh-GELU, dropout, Linear (as in DiT)."""
    hidden = int(width * mlp_ratio)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), Dropout(dropout),
                         nn.Linear(hidden, width))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens, q, k, v from one Linear; the softmax in fp32."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        B, N, D = x.shape
        qkv = self.qkv(x)                                                              # (B, N, 3D)
        q, k, v = qkv.reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, h, N, d)
        a = attention_short(q, k, v).to(qkv.dtype)                                     # (B, h, N, d)
        return self.proj(a.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Every token attends to the prompt's tokens, padding masked out (PixArt-α); starts at zero."""

    def __init__(self, width: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:  # (B, N, D), (B, L, Dc), (B, L)
        B, N, D = x.shape
        d = D // self.heads
        q = self.q(x).reshape(B, N, self.heads, d).transpose(1, 2)                     # (B, h, N, d)
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 × (B, h, L, d)
        a = attention_short(q, k, v, mask.to(torch.bool)).to(q.dtype)                  # (B, h, N, d)
        return self.proj(a.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """x + g₁·Attn(adaLN x) [+ CrossAttn(LN x, text)] + g₂·MLP(adaLN x); the identity at init."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, context_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = layer_norm(width), layer_norm(width)
        self.attn = SelfAttention(width, heads)
        self.cross = CrossAttention(width, heads, context_dim) if context_dim else None
        self.norm_cross = layer_norm(width) if context_dim else None
        self.mlp = mlp(width, mlp_ratio, dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor, text: dict[str, Tensor] | None = None) -> Tensor:  # (B,N,D), (B,D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=2)  # 6 × (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), text["tokens"], text["mask"])
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))          # (B, N, D)


class JointAttention(nn.Module):
    """One attention over [image tokens; text tokens], each stream with its own qkv and output projection (SD3);
    text padding is masked out as keys. ``text_out=False`` (the last block): the text stream gives only keys and
    values, and only the image tokens query."""

    def __init__(self, width: int, heads: int, text_out: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.text_qkv = nn.Linear(width, (3 if text_out else 2) * width)
        self.text_proj = nn.Linear(width, width) if text_out else None

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:  # (B,N,D), (B,L,D), (B,L)
        B, N, D = x.shape
        h, d = self.heads, D // self.heads
        x_qkv = self.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)               # 3 × (B, h, N, d)
        y_qkv = self.text_qkv(y).reshape(B, y.shape[1], -1, h, d).permute(2, 0, 3, 1, 4)  # 3 (or k, v) × (B, h, L, d)
        k = torch.cat([x_qkv[1], y_qkv[-2]], dim=2)                                      # (B, h, N+L, d)
        v = torch.cat([x_qkv[2], y_qkv[-1]], dim=2)                                      # (B, h, N+L, d)
        q = x_qkv[0] if self.text_proj is None else torch.cat([x_qkv[0], y_qkv[0]], dim=2)  # (B, h, N[+L], d)
        keys = torch.cat([mask.new_ones(B, N), mask], dim=1)                             # (B, N+L): all image keys
        a = attention_short(q, k, v, keys).to(k.dtype).transpose(1, 2).reshape(B, -1, D)  # (B, N[+L], D)
        return self.proj(a[:, :N]), None if self.text_proj is None else self.text_proj(a[:, N:])


class JointBlock(nn.Module):
    """SD3's MM-DiT block: image stream x and text stream y, each with its own adaLN-Zero (from the same c), LayerNorms
    and MLP, meeting in one :class:`JointAttention`. The image update is x + g₁·Attn + g₂·MLP as in
    :class:`DiTBlock`, so the block is the identity on x at init. ``last``: the text stream's output would be
    discarded, so it has no output projection, MLP or gates (as in SD3), only the shift/scale of its keys and values.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, last: bool = False):
        super().__init__()
        self.norm1, self.norm2 = layer_norm(width), layer_norm(width)
        self.attn = JointAttention(width, heads, text_out=not last)
        self.mlp = mlp(width, mlp_ratio, dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.text_norm1 = layer_norm(width)
        self.text_norm2, self.text_mlp = (None, None) if last else (layer_norm(width), mlp(width, mlp_ratio, dropout))
        self.text_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, (2 if last else 6) * width))

    def forward(self, x: Tensor, y: Tensor, c: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (B, N, D), y (B, L, D), c (B, D), bool mask (B, L) -> x, y (None in the last block)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=2)  # 6 × (B, 1, D)
        t = self.text_ada(c)[:, None].chunk(2 if self.text_mlp is None else 6, dim=2)      # (2 or 6) × (B, 1, D)
        a_x, a_y = self.attn(modulate(self.norm1(x), shift1, scale1), modulate(self.text_norm1(y), t[0], t[1]), mask)
        x = x + gate1 * a_x
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))             # (B, N, D)
        if self.text_mlp is None:
            return x, None
        y = y + t[2] * a_y
        return x, y + t[5] * self.text_mlp(modulate(self.text_norm2(y), t[3], t[4]))  # (B, L, D)


class DiT(nn.Module):
    """F(x_in, noise_cond, cond) for images (B, in_channels, H, W), as a transformer over p×p patches.

    ``noise_embedding``, ``cond`` and ``context_dim`` as for :class:`~undiffuse.nets.unet.UNet`: a
    discrete step ("positional") or continuous c_noise ("fourier"); class labels (B,) with -1 for
    "no class"; or, for ``context_dim`` > 0, a dict of "tokens" (B, L, context_dim), "mask" (B, L)
    and "pooled" (B, context_dim). ``text_attention`` picks how the tokens condition the image: "cross"
    (PixArt-α cross-attention) or "joint" (SD3 joint attention, :class:`JointBlock`); the pooled embedding
    joins c in both. ``image_size`` is checked in the config; any H, W divisible by ``patch_size`` works in
    forward. The output is exactly 0 at init (zero final layer).
    """

    def __init__(self, in_channels: int = 4, image_size: int = 16, patch_size: int = 2, width: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, num_classes: int = 0, context_dim: int = 0,
                 noise_embedding: Literal["positional", "fourier"] = "positional", out_channels: int | None = None,
                 dropout: float = 0.0, text_attention: Literal["cross", "joint"] = "cross"):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if min(in_channels, out_channels, image_size, patch_size, width, depth, heads) < 1 or mlp_ratio <= 0:
            raise UndiffuseError(f"DiT sizes must be positive: in_channels={in_channels}, out_channels={out_channels}, "
                                 f"image_size={image_size}, patch_size={patch_size}, width={width}, depth={depth}, "
                                 f"heads={heads}, mlp_ratio={mlp_ratio}")
        if image_size % patch_size:
            raise UndiffuseError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if width % heads:
            raise UndiffuseError(f"width {width} is not divisible by heads {heads}")
        if width % 4:
            raise UndiffuseError(f"width {width} must be divisible by 4 (2-D sin-cos position embeddings)")
        if not 0 <= dropout < 1:
            raise UndiffuseError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes < 0 or context_dim < 0 or (num_classes and context_dim):
            raise UndiffuseError(f"a DiT takes classes or text, not both: num_classes={num_classes}, "
                                 f"context_dim={context_dim}")
        if text_attention not in TEXT_ATTENTIONS:
            raise UndiffuseError(f"unknown text_attention {text_attention!r}; known: {', '.join(TEXT_ATTENTIONS)}")
        if text_attention == "joint" and not context_dim:
            raise UndiffuseError("text_attention='joint' needs text tokens (context_dim > 0)")
        self.in_channels, self.out_channels, self.patch_size, self.width = in_channels, out_channels, patch_size, width
        self.num_classes, self.context_dim, self.text_attention = num_classes, context_dim, text_attention

        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        # Conditioning vector c = MLP(noise embedding) [+ class embedding | + Linear(pooled text)].
        self.noise_embed = noise_embedding_layer(noise_embedding, FREQ_DIM)
        self.noise_mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = LabelEmbedding(num_classes, width) if num_classes else None
        self.text_embed = nn.Linear(context_dim, width) if context_dim else None
        if text_attention == "joint":  # the prompt's tokens to the width, once; no positions (SD3)
            self.token_embed = nn.Linear(context_dim, width)
            self.blocks = nn.ModuleList(JointBlock(width, heads, mlp_ratio, dropout, last=i == depth - 1)
                                        for i in range(depth))
        else:
            self.token_embed = None
            self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, context_dim, dropout) for _ in range(depth))
        self.final_norm = layer_norm(width)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, patch_size * patch_size * out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: xavier-uniform linears (and patch conv), N(0, 0.02) embeddings, then the zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.width, -1))
        nn.init.zeros_(self.patch_embed.bias)
        for m in self.noise_mlp[0], self.noise_mlp[2]:
            nn.init.normal_(m.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.table.weight, std=0.02)
        for block in self.blocks:
            zero_(block.ada[1])                     # adaLN-Zero: gates 0, so the block is the identity
            if isinstance(block, JointBlock):
                zero_(block.text_ada[1])            # the text stream too (adaLN-Zero)
            elif block.cross is not None:
                zero_(block.cross.proj)             # cross-attention starts as the zero map
        zero_(self.final_ada[1])
        zero_(self.final)                           # F ≡ 0 at init

    def patchify(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, N, D), N = (H/p)(W/p), row-major
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)                      # (B, N, D)
        return tokens + sincos_2d(h, w, self.width).to(tokens.device, self.patch_embed.weight.dtype)

    def unpatchify(self, tokens: Tensor, h: int, w: int) -> Tensor:  # (B, N, p·p·C) -> (B, C, h·p, w·p)
        B, p, C = tokens.shape[0], self.patch_size, self.out_channels
        x = tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)             # (B, C, h, p, w, p)
        return x.reshape(B, C, h * p, w * p)

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Tensor | dict[str, Tensor] | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UndiffuseError(f"this DiT takes images (batch, {self.in_channels}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise UndiffuseError(f"image size {(H, W)} is not divisible by the patch size {p}")
        noise_cond = torch.as_tensor(noise_cond, device=x.device).reshape(-1)
        if len(noise_cond) not in (1, B):
            raise UndiffuseError(f"noise_cond has {len(noise_cond)} values for a batch of {B}")
        c = self.noise_mlp(self.noise_embed(noise_cond.expand(B)))                    # (B, D)
        text = None
        if self.class_embed is not None:
            if cond is not None and (not isinstance(cond, Tensor) or cond.shape != (B,) or cond.is_floating_point()):
                raise UndiffuseError(f"this DiT is class-conditioned: cond must be None or integer labels ({B},)")
            c = c + self.class_embed(cond, B)
        elif self.text_embed is not None:
            text = check_text_cond(cond, B, self.context_dim, "DiT")
            c = c + self.text_embed(text["pooled"].to(c.dtype))
        elif cond is not None:
            raise UndiffuseError("this DiT is unconditional (num_classes=0, context_dim=0) but got a cond")

        h = self.patchify(x)                                                          # (B, N, D)
        if self.token_embed is not None:
            y, mask = self.token_embed(text["tokens"].to(c.dtype)), text["mask"].to(torch.bool)  # (B, L, D), (B, L)
            for block in self.blocks:
                h, y = block(h, y, c, mask)                                           # (B, N, D), (B, L, D)
        else:
            for block in self.blocks:
                h = block(h, c, text)                                                 # (B, N, D)
        shift, scale = self.final_ada(c)[:, None].chunk(2, dim=2)                     # 2 × (B, 1, D)
        h = self.final(modulate(self.final_norm(h), shift, scale))                   # (B, N, p·p·C_out)
        return self.unpatchify(h, H // p, W // p).to(x.dtype)                        # (B, C_out, H, W)
