"""The 2-D demo: train on a toy set, sample with a registered sampler, measure, draw one PNG."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import samplers
from .data import toy_dataset
from .denoiser import Denoiser
from .evaluation import energy_distance, sliced_wasserstein
from .process import sigmas_karras
from .train_toy import ToyConfig, ToyRun, torch_threads, train_toy

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # EDM's sampling range (Karras et al. 2022, §5)


@dataclass
class Generation:
    """Samples and the path that led to them, one state per denoiser call reported to the callback."""

    samples: Tensor      # (n, 2)
    path: Tensor         # (K + 1, n, 2): the sampler's x in VP scale x/√(1+σ²), then the samples
    path_sigmas: Tensor  # (K + 1, n): the σ of each state (per sample: adaptive steps differ), then 0
    seconds: float       # wall-clock time of the sampler


@dataclass
class DemoResult:
    run: ToyRun
    sampler: str
    data: Tensor        # (n, 2) training points, as drawn in the figure
    generation: Generation
    metrics: dict[str, dict[str, float]]  # distance → {"generated", "fresh data", "noise"} → value


def generate(denoiser: Denoiser, n: int, sampler: str = "dpmpp_2m", steps: int = 30, seed: int = 0) -> Generation:
    """n samples on a Karras grid; sample i starts from the noise of seed ``seed + i``."""
    sigmas = sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX)
    gens = samplers.make_generators(range(seed, seed + n))
    x = samplers.randn((n, 2), gens) * SIGMA_MAX
    states, levels = [], []

    def record(i: int, sigma: float | Tensor, x_i: Tensor, x0_hat: Tensor) -> None:
        s = torch.as_tensor(sigma, dtype=x_i.dtype).expand(n)                    # (n,)
        states.append(x_i / (1 + s[:, None] ** 2).sqrt())
        levels.append(s)

    start = time.perf_counter()
    out = samplers.get(sampler)(denoiser, x, sigmas, generator=gens, callback=record)
    seconds = time.perf_counter() - start
    return Generation(out, torch.stack([*states, out]), torch.stack([*levels, torch.zeros(n)]), seconds)


def sample_quality(samples: Tensor, data: str, seed: int = 0) -> dict[str, dict[str, float]]:
    """Distances from fresh data to the samples, to a second fresh data set (what a perfect model
    scores) and to N(0, I) noise (what an untrained one starts from)."""
    n = len(samples)
    reference = toy_dataset(data, n, seed=seed + 1_000_003)
    others = {"generated": samples, "fresh data": toy_dataset(data, n, seed=seed + 2_000_003),
              "noise": torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))}
    return {"energy distance": {k: energy_distance(v, reference) for k, v in others.items()},
            "sliced Wasserstein": {k: sliced_wasserstein(v, reference) for k, v in others.items()}}


def run_demo(config: ToyConfig, sampler: str = "dpmpp_2m", steps: int = 30, n: int = 2000,
             out: Path | str = "out/demo", progress: bool = True) -> tuple[DemoResult, Path]:
    """Train, sample, measure; write ``out/demo.png`` and the options and numbers to ``out/demo.json``."""
    from .plots import plot_demo  # matplotlib is only needed here

    samplers.info(sampler)  # fail on a bad name before a minute of training
    with torch_threads(config.threads):
        run = train_toy(config, progress=progress)
        generation = generate(run.denoiser, n, sampler, steps, seed=config.seed)
    result = DemoResult(run, sampler, toy_dataset(config.data, n, seed=config.seed), generation,
                        sample_quality(generation.samples, config.data, config.seed))
    png = plot_demo(result, Path(out) / "demo.png")
    record = {"config": asdict(config), "sampler": sampler, "steps": steps, "n": n, "train_steps": run.steps,
              "train_seconds": run.seconds, "sample_seconds": generation.seconds, "metrics": result.metrics}
    (Path(out) / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    return result, png
