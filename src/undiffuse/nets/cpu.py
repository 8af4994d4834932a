"""CPU settings for training: bf16 autocast, attention kept in fp32, malloc that keeps its pages.

Measured defaults (2-core AVX-512-bf16 machine, UNet defaults, training step = forward + backward +
fused AdamW, batch 64 of 1×32×32, 2 threads; bench/README.md has the tables, 2026-11-23):

- ``train_autocast(True)``: bf16 autocast, 1.85× fp32 (35.1 vs 19.0 img/s). Convolutions and linears
  run in bf16 through oneDNN; weights, optimizer state and loss stay fp32; peak memory halves.
- :func:`attention_fp32`: attention leaves autocast. At 8×8 it measured the same as bf16 attention
  (±3 %), at 16×16 it helps (the CPU flash-attention backward in bf16 is slow, CPU_NOTES.md), and
  fp32 softmax is the safer numerics, so it is always on.
- :func:`keep_freed_memory`: stops tensors over 32 MiB being page-faulted in afresh on every use
  (a 50 MB ``torch.cat``: 14 → 2.3 ms). At batch 64 of 32×32 the step gain is within noise (±5 %);
  it matters for bigger batches or images. Harmless otherwise: the process keeps its peak memory.
- NCHW, not channels_last: channels_last made the convolutions 10 % faster but GroupNorm's
  backward 30× slower; the step measured 0.84×.
- ``torch.optim.AdamW(..., fused=True)``: one kernel instead of ~10 ops per parameter tensor.
- never ``torch.compile`` a training step here: with torch 2.13 CPU it returned zero gradients
  for most parameters (CPU_NOTES.md).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import UndiffuseError

PRECISIONS = ("bf16", "fp32")
DEFAULT_INFERENCE_PRECISION = "bf16"   # chosen by bench/inference_levers.py; quality check in bench/README.md


@contextlib.contextmanager
def train_autocast(enabled: bool = True, device_type: str = "cpu") -> Iterator[None]:
    """Run the forward pass (and the loss) under bf16 autocast; a no-op when ``enabled`` is False.

    Use around the forward and the loss only; call ``backward()`` and ``optimizer.step()`` outside.
    """
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
        yield


def check_precision(precision: str) -> str:
    """``precision`` if it is one this package runs a network in, else an explicit error."""
    if precision not in PRECISIONS:
        raise UndiffuseError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def inference_autocast(precision: str = DEFAULT_INFERENCE_PRECISION, device_type: str = "cpu") -> Iterator[None]:
    """Run a network's forward pass for sampling in ``precision``: "bf16" is bf16 autocast (attention still
    fp32, :func:`attention_fp32`), "fp32" a no-op.

    Autocast changes only the ops on its list (convolutions, linears, matmuls, attention); element-wise
    arithmetic on fp32 tensors, such as a sampler's state update or a denoiser's preconditioning, stays fp32.
    """
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16"):
        yield


def attention_fp32(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ/√d) v in fp32 whatever the autocast state: (B, heads, N, d), (B, heads, M, d)² ->
    (B, heads, N, d); ``mask`` (B, M), True where a key may be attended to (False: padding).

    CPU autocast would cast fp32 inputs back to bf16, so autocast is switched off inside. The
    inputs are made contiguous: with a strided last dim SDPA falls back to its slower math path.
    """
    q, k, v = (t.to(torch.float32, memory_format=torch.contiguous_format) for t in (q, k, v))
    attn_mask = mask[:, None, None, :] if mask is not None else None
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def attention_short(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ/√d) v for short sequences (a DiT's few dozen tokens, a prompt's keys): the two products as batched
    matmuls in the input's (or autocast's) precision, the softmax in fp32. Shapes as :func:`attention_fp32`.

    At 64 tokens the CPU flash-attention kernel is slow: forward + backward of a DiT-XS block's self-attention
    (batch 64, 4 heads of 64) took 18.9 ms in fp32 flash attention, 25.3 ms in bf16, and 7.1 ms this way
    (cross-attention to 24 tokens: 11.2 → 5.7 ms); the (N, M) score matrix is small at these lengths.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)                       # (B, h, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    with torch.autocast(q.device.type, enabled=False):
        weights = scores.float().softmax(-1)
    return weights.to(v.dtype) @ v                                                # (B, h, N, d)


def keep_freed_memory() -> bool:
    """Keep glibc malloc from returning freed memory to the OS, so big activations reuse warm pages.

    By default every tensor over 32 MiB is a fresh ``mmap`` and its pages fault in (zeroed by the
    kernel) on first touch, every step: a 50 MB ``torch.cat`` took 14 ms instead of 2.3 ms. This sets
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``
    would); the process keeps its peak memory. Process-wide; returns False where it cannot (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
