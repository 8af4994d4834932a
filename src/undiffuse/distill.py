"""Few-step models by trajectory distillation: a student learns where the teacher's guided ODE ends.

The teacher (a trained diffusion model with classifier-free guidance at weight w) solves the probability-flow ODE
from pure noise at σ_0 to 0, and the states it passes at the student's σ levels σ_0 > σ_1 > … > σ_{L-1} are
kept with the end point x̂. The student, a denoiser of the same architecture initialised from the teacher,
learns D_s(x_{σ_l}, σ_l, c) ≈ x̂ at every level: the consistency function of the guided ODE (Song et al. 2023,
§3), fitted to the exact trajectory ends rather than bootstrapped from neighbouring σ's, as in knowledge
distillation of samplers (Luhman & Luhman 2021) extended to several levels. Guidance is distilled in: the
student takes one evaluation per step.

Sampling is multistep consistency sampling (``samplers.consistency``) on the ``distilled`` grid: one step maps
noise to an image; n steps re-noise the estimate to levels ⌊lL/n⌋ and denoise again. Without guidance the
states x_{σ_l} of exact PF-ODE trajectories have the marginal of the data blurred by N(0, σ_l²), the same
marginal as a re-noised estimate; a guided ODE's states do not (guidance is not the score of any blurred
distribution), so a student fitted to them meets unfamiliar inputs at its second step. With ``distill.renoise``
the levels below the first are learnt from the inputs sampling makes instead: each trajectory's end re-noised,
x̂ + σ_l·ε, with the teacher's guided ODE end from that point as the target (an SDEdit-style refinement by the
teacher, Meng et al. 2022, distilled one level at a time).

Trajectories are generated once (one seed per trajectory, classes in turn) and cached in chunks keyed by the
teacher's weights and the distill settings; an interrupted generation resumes at the next missing chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import samplers
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, to_dict
from .denoiser import with_precision
from .errors import UndiffuseError
from .guidance import CFGDenoiser, GuidanceInterval
from .model_files import resolve_model_path
from .models import LoadedModel, load_model, sigma_range
from .nets.cpu import keep_freed_memory
from .sampling import card_interval
from .process import sigmas_karras

log = logging.getLogger(__name__)

CHUNK = 1024  # trajectories per cache file


def teacher_grid(levels: list[float], steps_per_level: int, sigma_min: float) -> tuple[Tensor, list[int]]:
    """The teacher's σ grid through every student level, and the index of each level in it.

    Between two levels ``steps_per_level`` steps evenly spaced in log σ; from the last level a Karras grid
    (ρ = 7) of as many steps down to ``sigma_min``, then 0.
    """
    grid: list[float] = []
    at: list[int] = []
    for hi, lo in pairwise(levels):
        at.append(len(grid))
        grid += torch.logspace(math.log10(hi), math.log10(lo), steps_per_level + 1)[:-1].tolist()
    at.append(len(grid))
    last = levels[-1]
    if last <= sigma_min:
        raise UndiffuseError(f"distill.sigmas: the last level {last} must lie above the teacher's σ_min "
                             f"{sigma_min:.4g}")
    grid += sigmas_karras(steps_per_level, sigma_min, last).tolist()  # ends in 0
    return torch.tensor(grid, dtype=torch.float32), at


@dataclass
class TrajectoryData:
    """The trainer's view of the teacher's trajectories: states (N, L, *shape) at the student's levels, their
    end points (N, *shape) and labels (N,); :meth:`pairs` draws (x_σ, σ, label, end) with a level per sample."""

    states: Tensor
    ends: Tensor
    labels: Tensor
    levels: Tensor
    class_names: list[str]
    renoised: Tensor | None = None        # (N, L-1, *shape): ends re-noised to levels 1 … L-1 (distill.renoise)
    renoised_ends: Tensor | None = None   # (N, L-1, *shape): the teacher's ODE end from each of them
    dim: None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ends)

    def pairs(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        level = torch.randint(len(self.levels), (len(indices),), generator=generator)
        x, end = self.states[indices, level], self.ends[indices]
        if self.renoised is not None:  # below the first level: a re-noised end and the teacher's end from there
            low = level > 0
            below = level[low] - 1
            x[low] = self.renoised[indices[low], below]
            end[low] = self.renoised_ends[indices[low], below]
        return x, self.levels[level], self.labels[indices], end


def distillation_loss(student, x: Tensor, sigma: Tensor, cond: Tensor | None, end: Tensor) -> Tensor:
    """‖D_s(x_σ, σ, c) − x̂‖² averaged over the batch and elements: the student's miss of the trajectory's end."""
    return (student(x, sigma, cond).float() - end).pow(2).mean()


def _key(teacher_path: Path, cfg: Config, guidance: float, parallel: float = 1.0) -> str:
    h = hashlib.sha256()
    with open(teacher_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    settings = {**to_dict(cfg)["distill"], "guidance": guidance, "seed": cfg.train.seed}
    if parallel != 1.0:  # (plain guidance keeps the keys of the caches written before projection existed)
        settings["guidance_parallel"] = parallel
    settings.pop("trajectories")  # more trajectories extend the same cache
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    from .data.emoji import data_root
    return data_root() / "trajectories"


def teacher_guidance(cfg: Config, teacher: LoadedModel) -> tuple[float, float]:
    """The guidance distilled in, (w, η): ``distill.guidance`` as classifier-free guidance (η = 1), or the teacher
    card's with its projection η (``sample.guidance_parallel``, Sadat et al. 2024): its weight was chosen with it."""
    if cfg.distill.guidance:
        return cfg.distill.guidance, 1.0
    return teacher.config.sample.guidance, teacher.config.sample.guidance_parallel


def teacher_interval(cfg: Config, teacher: LoadedModel) -> GuidanceInterval | None:
    """The σ range the teacher guides in: ``distill.guidance_interval``, or its card's (None: every σ)."""
    interval = card_interval(teacher, tuple(cfg.distill.guidance_interval) or None)
    return GuidanceInterval(*interval) if interval else None


def generate_chunk(teacher: LoadedModel, cfg: Config, start: int, count: int, guidance: float,
                   grid: Tensor, at: list[int], interval: GuidanceInterval | None = None,
                   parallel: float = 1.0) -> dict[str, Tensor]:
    """Trajectories ``start`` … ``start + count - 1``: seed ``train.seed·10⁹ + i``, class i mod K, guided at
    ``guidance`` in ``interval`` with the update's part along x̂0 weighted by ``parallel``."""
    shape = teacher.space.shape
    idx = torch.arange(start, start + count)
    labels = idx % teacher.num_classes if teacher.num_classes else torch.full((count,), -1)
    gens = samplers.make_generators([cfg.train.seed * 10**9 + int(i) for i in idx])
    x = samplers.randn((count, *shape), gens) * float(grid[0])
    base = with_precision(teacher.denoiser, "auto")
    denoiser = CFGDenoiser(base, guidance, interval=interval, parallel=parallel) if teacher.num_classes else base
    states = torch.empty(count, len(at), *shape)
    where = {step: level for level, step in enumerate(at)}

    def keep(i, sigma, x_i, x0):
        if i in where:
            states[:, where[i]] = x_i

    solve = samplers.get(cfg.distill.sampler)
    cond = labels if teacher.num_classes else None
    end = solve(denoiser, x, grid, cond=cond, generator=gens, callback=keep)
    out = {"states": states, "ends": end, "labels": labels}
    if cfg.distill.renoise:  # the end re-noised to each lower level, and where the teacher's ODE takes it from there
        starts = [end + samplers.randn(end.shape, gens) * float(grid[step]) for step in at[1:]]
        out["renoised"] = torch.stack(starts, 1)
        out["renoised_ends"] = torch.stack([solve(denoiser, x_l, grid[step:], cond=cond, generator=gens)
                                            for x_l, step in zip(starts, at[1:], strict=True)], 1)
    return out


def trajectory_data(cfg: Config, teacher: LoadedModel | None = None, progress: bool = True) -> TrajectoryData:
    """The trajectories of ``cfg.distill.teacher`` (``teacher``: that model, loaded) for ``cfg``, generated where the
    cache lacks them."""
    teacher = teacher or load_model(cfg.distill.teacher)
    keep_freed_memory()  # batches of 256 guided: activations over 32 MiB, page-faulted afresh at every call otherwise
    if teacher.meta.get("dim") is not None:
        raise UndiffuseError(f"distill.teacher: {cfg.distill.teacher} is a point-data model; distillation is for "
                             "image models")
    samplers.info(cfg.distill.sampler)
    (guidance, parallel), interval = teacher_guidance(cfg, teacher), teacher_interval(cfg, teacher)
    sigma_min = sigma_range(teacher.config)[0]
    grid, at = teacher_grid(list(cfg.distill.sigmas), cfg.distill.steps_per_level, sigma_min)
    folder = cache_dir() / _key(resolve_model_path(cfg.distill.teacher), cfg, guidance, parallel)
    n = cfg.distill.trajectories
    chunks = []
    steps = len(grid) - 1 + (sum(len(grid) - 1 - step for step in at[1:]) if cfg.distill.renoise else 0)
    nfe = steps * (2 if teacher.num_classes and guidance != 1 else 1)
    with tqdm(total=n, disable=not progress, desc=f"teacher trajectories ({nfe} NFE each)", unit="traj") as bar:
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            path = folder / f"chunk_{start // CHUNK:05d}.safetensors"
            chunk = None
            if path.is_file():
                try:
                    chunk, _ = load_checkpoint(path)
                    if len(chunk["ends"]) < count:
                        chunk = None
                except (UndiffuseError, KeyError):
                    chunk = None
            if chunk is None:
                chunk = {}
                for s in range(start, start + count, 256):
                    part = generate_chunk(teacher, cfg, s, min(256, start + count - s), guidance, grid, at,
                                          interval, parallel)
                    for k, v in part.items():
                        chunk[k] = torch.cat([chunk[k], v]) if k in chunk else v
                    bar.update(len(part["ends"]))
                try:
                    save_checkpoint(path, chunk, {"teacher": cfg.distill.teacher, "guidance": guidance,
                                                  "guidance_parallel": parallel,
                                                  "distill": to_dict(cfg)["distill"]})
                except UndiffuseError as err:  # an unwritable cache costs time next run, never this one
                    log.warning("could not cache teacher trajectories in %s: %s", path, err)
            else:
                bar.update(count)
            chunks.append({k: v[:count] for k, v in chunk.items()})
    cat = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    levels = torch.tensor(cfg.distill.sigmas, dtype=torch.float32)
    return TrajectoryData(cat["states"], cat["ends"], cat["labels"].long(), levels, list(teacher.class_names),
                          cat.get("renoised"), cat.get("renoised_ends"))
