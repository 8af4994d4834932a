"""Mixed precision for training and sampling on a CPU: bf16 autocast, attention kept in fp32.

Measured on the 2-core AVX-512 (bf16) machine this project runs on, U-Net training step, batch 64,
1×32×32, 2 threads (bench/README.md has the tables):

- bf16 autocast is the default (``train_autocast(True)``): convolutions and linears run in bf16
  through oneDNN, about twice the fp32 rate; the weights, the optimizer state and the loss stay fp32.
- attention must leave autocast (:func:`attention_fp32`): the CPU flash-attention backward in bf16
  is several times slower than in fp32.
- channels_last is *not* used: it measured slower for this training step in bf16.
- never ``torch.compile`` a training step here: with torch 2.13 CPU it returned zero gradients
  for most parameters (CPU_NOTES.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F


@contextlib.contextmanager
def train_autocast(enabled: bool = True, device_type: str = "cpu") -> Iterator[None]:
    """Run the forward pass (and the loss) under bf16 autocast; a no-op when ``enabled`` is False.

    Use around the forward and the loss only; call ``backward()`` and ``optimizer.step()`` outside.
    """
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
        yield


def attention_fp32(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ/√d) v in fp32 whatever the autocast state: (B, heads, N, d)³ -> (B, heads, N, d).

    CPU autocast would cast fp32 inputs back to bf16, so autocast is switched off inside.
    """
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
