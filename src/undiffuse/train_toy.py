"""Train a small diffusion model on a 2-D toy distribution: the training loop, top to bottom.

EDM preconditioning with its log-normal σ density (Karras et al. 2022, Table 1) gives clean
samples of every toy set in about a minute on two CPU cores; a DDPM ε-network on the linear
schedule, trained as long, leaves stray points from its σ_max ≈ 157 start (x̂_0 = x - σ ε̂
magnifies the ε error 157-fold).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .data import toy_dataset
from .denoiser import EDMDenoiser
from .ema import EMA
from .errors import UndiffuseError
from .losses import denoising_loss
from .nets import MLP
from .process import sample_sigma_lognormal


@dataclass
class ToyConfig:
    """A toy run; stop at whichever of ``seconds`` and ``steps`` is reached first."""

    data: str = "two_moons"      # a name from undiffuse.data.TOY_SETS
    n_data: int = 100_000        # a fixed training set, as real data is finite
    seconds: float | None = 60.0  # wall-clock budget (None: steps only)
    steps: int | None = None     # step budget (None: seconds only)
    batch_size: int = 512        # more steps beat bigger batches at a fixed time budget
    lr: float = 2e-3             # AdamW; decayed linearly to 10 % over the budget
    warmup: int = 100            # steps of linear lr warm-up
    ema_decay: float = 0.999     # averages the last ~1000 of several thousand steps
    width: int = 128             # MLP width; 2-D data needs no more at this budget
    depth: int = 3               # residual blocks
    sigma_data: float = 1.0      # the toy sets are scaled to unit standard deviation
    p_mean: float = -1.2         # ln σ ~ N(p_mean, p_std²) during training (EDM)
    p_std: float = 1.2
    seed: int = 0                # data, initialisation and batch order
    threads: int | None = 1      # layers this small run faster on one thread than on two (None: torch's default)

    def __post_init__(self) -> None:
        if self.seconds is None and self.steps is None:
            raise UndiffuseError("give a time budget (seconds) or a step budget (steps)")
        if (self.seconds is not None and self.seconds <= 0) or (self.steps is not None and self.steps < 1):
            raise UndiffuseError(f"budgets must be positive, got seconds={self.seconds}, steps={self.steps}")


@dataclass
class ToyRun:
    """What a run returns: the EMA denoiser, ready to sample, and its history."""

    denoiser: EDMDenoiser
    config: ToyConfig
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)


def make_toy_denoiser(config: ToyConfig) -> EDMDenoiser:
    """The MLP with Fourier features of c_noise = ¼ ln σ, wrapped in EDM's preconditioning."""
    net = MLP(dim=2, width=config.width, depth=config.depth, noise_embedding="fourier")
    return EDMDenoiser(net, sigma_data=config.sigma_data)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n intra-op threads (None: unchanged); on a busy 2-core machine one thread
    made this MLP's steps 3x faster than two, which wait on each other at every tiny matmul."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_toy(config: ToyConfig, progress: bool = True, points: Tensor | None = None) -> ToyRun:
    """Train on ``config.data`` (or on ``points`` (N, 2), scaled to unit standard deviation) and return
    the EMA weights' denoiser (in eval mode)."""
    if points is not None and (points.ndim != 2 or points.shape[1] != 2 or len(points) < 2):
        raise UndiffuseError(f"points must have shape (N ≥ 2, 2), got {tuple(points.shape)}")
    with torch_threads(config.threads):
        return _train(config, progress, points)


def _train(config: ToyConfig, progress: bool, points: Tensor | None) -> ToyRun:
    x_train = points.float() if points is not None else toy_dataset(config.data, config.n_data, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)                                           # the initial weights
    denoiser = make_toy_denoiser(config).train()
    ema = EMA(denoiser, config.ema_decay)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=config.lr, weight_decay=0.0)
    run = ToyRun(ema.model, config)

    by_time = config.steps is None
    bar = tqdm(total=config.seconds if by_time else config.steps, disable=None if progress else True, leave=False,
               desc=f"training on {config.data}", unit="s" if by_time else "steps", mininterval=0.5,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit}{postfix}")
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        done = max(elapsed / config.seconds if config.seconds else 0.0,
                   run.steps / config.steps if config.steps else 0.0)      # fraction of the budget used
        if done >= 1:
            break
        # Draw a batch and noise levels, take one AdamW step on the denoising loss, update the EMA.
        x0 = x_train[torch.randint(0, len(x_train), (config.batch_size,), generator=gen)]  # (B, 2)
        sigma = sample_sigma_lognormal(config.batch_size, config.p_mean, config.p_std, generator=gen).float()
        noise = torch.randn(x0.shape, generator=gen)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (run.steps + 1) / config.warmup) * (1 - 0.9 * done)
        loss = denoising_loss(denoiser, x0, sigma, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(denoiser)
        run.losses.append(loss.item())

        if run.steps % 25 == 0:
            recent = run.losses[-100:]
            bar.set_postfix_str(f"loss {sum(recent) / len(recent):.3f}, {run.steps} steps, "
                                f"{run.steps / max(elapsed, 1e-9):.0f} steps/s")
            bar.update((elapsed if by_time else run.steps) - bar.n)
    bar.close()
    run.seconds = time.perf_counter() - start
    if not all(math.isfinite(v) for v in run.losses[-10:]):
        raise UndiffuseError("training diverged (the loss is not finite); try a smaller --lr")
    return run
