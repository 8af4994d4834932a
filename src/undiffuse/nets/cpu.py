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

bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX). Elsewhere oneDNN emulates it: on
a 2-core AMD EPYC with AVX2 only, a 1024² bf16 GEMM ran at 0.8 GFLOP/s against 68 in fp32, and a training
step was 16× slower (bench/README.md, "bf16 without native support"). :func:`native_bf16` tells the two apart
and "auto" (the default of training and sampling) picks bf16 only where it is native.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import UndiffuseError

PRECISIONS = ("auto", "bf16", "fp32")
# bf16 where the hardware has it (bench/inference_levers.py chose bf16 on AVX512-BF16; quality check in
# bench/README.md), fp32 elsewhere
DEFAULT_INFERENCE_PRECISION = "auto"
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 flags; "bf16": Arm's BF16 extension


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux), or None where that file cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(flags.split())


@functools.cache
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether bf16 matrix products run natively (faster than fp32) on ``device_type``.

    CUDA: the device's own answer. CPU: the AVX512-BF16 or AMX flag (x86 Linux), BF16 (Arm Linux); where the
    flags cannot be read, torch's view of the vector unit (AVX-512 builds use bf16 dot products where the chip
    has them).
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if flags is not None and flags:
        return any(f in flags for f in _NATIVE_BF16_FLAGS)
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """"bf16" or "fp32" for ``precision``: "auto" is bf16 where :func:`native_bf16`, else fp32."""
    if check_precision(precision) == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


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
    fp32, :func:`attention_fp32`), "fp32" a no-op, "auto" one of the two (:func:`resolve_precision`).

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
