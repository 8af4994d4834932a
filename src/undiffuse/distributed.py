"""Data-parallel training on PyTorch's own engine: ``torchrun --nproc_per_node N -m undiffuse train …``.

Every rank draws the same global micro-batch (data order, flips, σ, noise and label dropout come from
the same seeded generator) and keeps its contiguous share; DistributedDataParallel averages the
gradients, so N ranks take the same step as one process with the whole batch (to float rounding).
Rank 0 alone logs and writes files. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UndiffuseError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous share of a global batch (the batch must divide evenly)."""
        if self.world == 1:
            return x.to(self.device)
        return x.chunk(self.world)[self.rank].to(self.device)

    def mean(self, value: float) -> float:
        """The mean of a per-rank number over all ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (e.g. a stop signal seen by one)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str = "cpu") -> Context:
    """Join the process group that torchrun describes in the environment (or run alone) on ``device``."""
    if device not in ("cpu", "cuda"):
        raise UndiffuseError(f"train.device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UndiffuseError("train.device = 'cuda' but no CUDA GPU is visible to PyTorch")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
    return Context(rank, world, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
