"""The U-Net's building blocks (ADM line: Ho et al. 2020; Dhariwal & Nichol 2021, §3).

Every block works on (B, C, H, W) in fp32 or under bf16 autocast; attention is the one place that
leaves autocast (see :func:`undiffuse.nets.cpu.attention_fp32`). Contiguous (NCHW) tensors are the
fast layout here: channels_last speeds the convolutions up but GroupNorm's backward slows 30×.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .cpu import attention_fp32


class _Dropout(torch.autograd.Function):
    """y = x·m/(1-p) with m ~ Bernoulli(1-p), the mask drawn 16 bits at a time from int64 words.

    Same distribution as ``F.dropout`` up to p rounded to a multiple of 2⁻¹⁶, but on CPU 2-3×
    cheaper: ``bernoulli_`` costs one generator call per element, ``random_`` on int64 one per four.
    The 0/1 mask is kept in x's dtype (mixed bool·bf16 products are slow) and 1/(1-p) applied as a
    scalar, so in bf16 it is not rounded to 8 bits (1/0.9 would become 1.109, a 0.16 % bias).
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = words.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768   # P(keep) = 1-p
        mask = keep.to(x.dtype)                                                       # 0 or 1
        ctx.save_for_backward(mask)
        ctx.scale = 1 / (1 - p)
        return (x * mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None


class Dropout(nn.Module):
    """Element-wise dropout (Srivastava et al. 2014), a faster CPU drop-in for ``nn.Dropout``."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return _Dropout.apply(x, self.p)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so the residual branch it closes starts as the zero map."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x ↦ skip(x) + conv₂(drop(SiLU(AdaGN(conv₁(SiLU(GN x)), e)))), AdaGN(h, e) = GN(h)·(1+s) + t.

    The noise/class embedding e is projected to a per-channel (s, t) (ADM's "scale-shift norm",
    Dhariwal & Nichol 2021, §3); conv₂ starts at zero so the block starts as the identity (skip).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        # No affine here: the embedding's (1+s, t) is the affine of this norm.
        self.norm2 = nn.GroupNorm(groups, out_ch, affine=False)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # (B, Cin, H, W), (B, E) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))                                  # (B, Cout, H, W)
        h = F.silu(self.adagn(h, emb))
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h

    def adagn(self, h: Tensor, emb: Tensor) -> Tensor:  # (B, C, H, W), (B, E) -> (B, C, H, W)
        """GN(h)·(1+s) + t as one native GroupNorm: per-sample GN with G groups is GN over the batch
        folded into channels, (1, B·C, H, W) with B·G groups, and then (1+s, t) is its affine.
        One kernel instead of two passes: 4× faster than GN + broadcast ``addcmul`` alone (forward +
        backward), though within the noise of a whole training step (bench/README.md)."""
        B, C = h.shape[:2]
        scale, shift = self.emb(emb).chunk(2, dim=1)                           # 2 × (B, C)
        out = F.group_norm(h.reshape(1, B * C, *h.shape[2:]), B * self.norm2.num_groups,
                           (1 + scale).reshape(-1), shift.reshape(-1), self.norm2.eps)
        return out.view_as(h)


class AttentionBlock(nn.Module):
    """x + proj(MHA(GN x)): multi-head self-attention over the H·W positions (ADM, §3).

    The attention product runs in fp32 even under bf16 autocast: on CPU the bf16 flash-attention
    backward is several times slower than fp32 (CPU_NOTES); the 1×1 projections stay in bf16.
    """

    def __init__(self, ch: int, groups: int, head_dim: int):
        super().__init__()
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_(nn.Conv2d(ch, ch, 1))
        self.fp32_attention = True  # False: let autocast run it in bf16 (slower on CPU; for benchmarks)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                              # 3 × (B, heads, HW, d)
        if self.fp32_attention:
            a = attention_fp32(q, k, v).to(qkv.dtype)
        else:
            a = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        a = a.transpose(-1, -2).reshape(B, C, H, W)                            # (B, C, H, W)
        return x + self.proj(a)


class CrossAttentionBlock(nn.Module):
    """x + proj(MHA(q = GN x, k, v = the text tokens)): every position looks at the prompt's tokens,
    padding masked out (Rombach et al. 2022, §3.3; Saharia et al. 2022). Starts as the identity."""

    def __init__(self, ch: int, groups: int, head_dim: int, context_dim: int):
        super().__init__()
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = zero_(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:  # (B,C,H,W), (B,L,D), (B,L)
        B, C, H, W = x.shape
        d = C // self.heads
        q = self.q(self.norm(x)).reshape(B, self.heads, d, H * W).transpose(-1, -2)   # (B, heads, HW, d)
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 × (B, heads, L, d)
        a = attention_fp32(q, k, v, mask.to(torch.bool)).to(q.dtype)
        return x + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve H and W: a 3×3 conv of stride 2 (ADM's conv_resample) or 2×2 average pooling."""

    def __init__(self, ch: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repeat, then a 3×3 conv (ADM; avoids checkerboards)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
