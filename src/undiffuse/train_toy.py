"""Train a small diffusion model on a 2-D toy distribution: a recipe for the one training loop.

The toy run is :class:`~undiffuse.train.Trainer` on a recipe made here (:func:`toy_recipe`): the same loop, the
same checkpoints, resume and log as every other model, with a time budget and a linearly decaying learning rate
as Trainer options (``train.max_seconds``, ``train.lr_schedule``).

EDM preconditioning with its log-normal σ density (Karras et al. 2022, Table 1) gives clean
samples of every toy set in about a minute on two CPU cores; a DDPM ε-network on the linear
schedule, trained as long, leaves stray points from its σ_max ≈ 157 start (x̂_0 = x - σ ε̂
magnifies the ε error 157-fold).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .config import Config, DataConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from .data.training import PointData
from .denoiser import EDMDenoiser
from .errors import UndiffuseError
from .models import build_denoiser
from .nets import MLP
from .train import Interrupted, Trainer


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
    losses: list[float] = field(default_factory=list)  # one per step taken by this call (a resumed run: since resume)
    seconds: float = 0.0                                # training time, summed over resumes
    steps: int = 0                                      # optimizer steps, summed over resumes
    out_dir: Path | None = None                         # the run folder, where one was given


CHECKPOINT_EVERY = 1000  # steps; a checkpoint of this MLP is a few MB, written in milliseconds


def toy_recipe(config: ToyConfig, out_dir: str | Path = "runs/toy") -> Config:
    """The toy run as a recipe of the one training loop: an MLP with EDM preconditioning on ``config.data``, fp32,
    no gradient clipping, warm-up then the rate decayed linearly to 10 % over the budget (steps or seconds)."""
    return Config(
        name=f"toy-{config.data}", out_dir=str(out_dir),
        data=DataConfig(name="toy", toy_set=config.data, toy_size=config.n_data, conditional=False),
        model=ModelConfig(backbone="mlp", channels=config.width, mlp_depth=config.depth, dropout=0.0),
        diffusion=DiffusionConfig(parameterization="edm", sigma_data=config.sigma_data, p_mean=config.p_mean,
                                  p_std=config.p_std),
        train=TrainConfig(steps=config.steps or 0, max_seconds=config.seconds or 0.0, batch_size=config.batch_size,
                          lr=config.lr, warmup=config.warmup, lr_schedule="linear", lr_final=0.1, weight_decay=0.0,
                          grad_clip=0.0, ema_decay=config.ema_decay, label_dropout=0.0, bf16=False, seed=config.seed,
                          log_every=100, sample_every=0, checkpoint_every=CHECKPOINT_EVERY, threads=0),
        sample=SampleConfig(sampler="dpmpp_2m", steps=30, grid="karras", guidance=1.0),
    ).validate()


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


def train_toy(config: ToyConfig, progress: bool = True, points: Tensor | None = None,
              out_dir: str | Path | None = None, resume: bool = False) -> ToyRun:
    """Train on ``config.data`` (or on ``points`` (N, 2), scaled to unit standard deviation) and return
    the EMA weights' denoiser (in eval mode).

    ``out_dir`` keeps the run (checkpoints, log.jsonl, config.json, model.safetensors: ``undiffuse sample`` and
    ``evaluate`` take it; ``resume`` continues it); without one it lives in a temporary folder, removed after."""
    if points is not None and (points.ndim != 2 or points.shape[1] != 2 or len(points) < 2):
        raise UndiffuseError(f"points must have shape (N ≥ 2, 2), got {tuple(points.shape)}")
    if resume and out_dir is None:
        raise UndiffuseError("resume needs the out_dir of the run to continue")
    data = PointData(points.float()) if points is not None else None
    with torch_threads(config.threads), tempfile.TemporaryDirectory(prefix="undiffuse-toy-") as tmp:
        cfg = toy_recipe(config, out_dir if out_dir is not None else Path(tmp) / "run")
        losses: list[float] = []
        trainer = Trainer(cfg, resume=resume, progress=progress, data=data,
                          on_step=lambda stats: losses.append(stats["loss"]))
        try:
            trainer.run()
        except Interrupted:
            if out_dir is not None:
                raise
            raise Interrupted(f"training stopped by a signal at step {trainer.step}; nothing was kept (give an "
                              "out_dir to resume a run)") from None
    if not all(math.isfinite(v) for v in losses[-10:]):
        raise UndiffuseError("training diverged (the loss is not finite); try a smaller --lr")
    denoiser = build_denoiser(cfg, trainer.ema.model).eval()
    return ToyRun(denoiser, config, losses, trainer.seconds, trainer.step,
                  Path(out_dir) if out_dir is not None else None)
