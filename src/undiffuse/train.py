"""The training loop: draw x0 and label, draw σ, add noise, loss, step, EMA, log, checkpoint.

Everything random comes from two sources whose states are checkpointed — ``gen`` (data order
is derived from the seed and the step; flips, label dropout, σ and noise are drawn from it) and
torch's global RNG (dropout) — so a resumed run ends with the same weights as an uninterrupted one.

Faults: SIGINT/SIGTERM finish the step, write a checkpoint and stop with :class:`Interrupted`; a
non-finite step is skipped and counted, and ``train.max_bad_steps`` of them in a row stop the run with
the last good checkpoint kept; a write that fails (full disk, unwritable folder) is a one-line error and
never touches the previous checkpoint. Under torchrun the loop is data-parallel (see ``distributed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__, distributed, samplers
from .checkpoint import (atomic_write, group, load_checkpoint, load_module_state, load_optimizer_state, optimizer_state,
                         prefixed, save_checkpoint)
from .config import Config, config_from_json, recipe_hash, to_dict
from .data.latents import encode_training_data
from .data.training import TrainingData, load_training_data
from .distill import distillation_loss, trajectory_data
from .ema import EMA
from .errors import UndiffuseError
from .guidance import CFGDenoiser, null_text
from .data.audio import write_wav_sequence
from .images import make_grid, save_png
from .loggers import RunLog, check_loggers
from .losses import denoising_loss
from .model_files import resolve_model_path
from .models import (build_denoiser, build_net, build_schedule, build_space, config_sigmas, load_model,
                     training_sigmas)
from .nets.autoencoder import autoencoder_loss, measure_scale, psnr
from .nets.cpu import native_bf16

log = logging.getLogger(__name__)


class Interrupted(UndiffuseError):
    """Training stopped by a signal after writing a checkpoint; ``--resume`` continues it."""


class DataOrder:
    """Sample indices in a fresh seeded permutation per epoch: position k → perm_{k // N}[k % N]."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._epoch, self._perm = n, seed, -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def indices(self, start: int, count: int) -> Tensor:
        parts, k, end = [], start, start + count
        while k < end:  # a slice of each epoch's permutation the batch spans (one, or two at an epoch's end)
            epoch, pos = divmod(k, self.n)
            take = min(end - k, self.n - pos)
            parts.append(self._permutation(epoch)[pos:pos + take])
            k += take
        return torch.cat(parts)


def learning_rate(cfg: Config, step: int, done: float | None = None) -> float:
    """Linear warm-up to the peak rate, then constant (DDPM and ADM train at a constant rate), or with
    ``train.lr_schedule = "linear"`` down to ``lr_final``·lr as ``done`` (the fraction of the budget spent; default
    step / train.steps) goes from 0 to 1."""
    t = cfg.train
    rate = t.lr * min(1.0, (step + 1) / max(1, t.warmup))
    if t.lr_schedule == "linear":
        done = step / t.steps if done is None and t.steps else (done or 0.0)
        rate *= 1 - (1 - t.lr_final) * min(1.0, done)
    return rate


def trains_in_bf16(cfg: Config) -> bool:
    """``train.bf16`` where the hardware multiplies bf16 natively; elsewhere emulated bf16 is many times slower than
    fp32 (16× on an AVX2-only CPU, :mod:`undiffuse.nets.cpu`), so the run trains in fp32."""
    return cfg.train.bf16 and native_bf16("cuda" if cfg.train.device == "cuda" else "cpu")


def _autocast(cfg: Config) -> contextlib.AbstractContextManager:
    device = "cuda" if cfg.train.device == "cuda" else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16) if trains_in_bf16(cfg) else contextlib.nullcontext()


class Trainer:
    """Holds the run's state; :meth:`run` trains to ``cfg.train.steps`` (or until ``train.max_seconds`` is spent).

    ``data`` trains on a data set given here instead of the one ``cfg.data`` names (the 2-D demo's points of an
    image); ``on_step(stats)`` is called after every optimizer step with its loss, grad_norm and lr."""

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True, data: TrainingData | None = None,
                 on_step: Callable[[dict[str, float]], None] | None = None):
        self.cfg, self.progress, self.on_step = cfg, progress, on_step
        check_loggers(cfg.train.log)  # a missing extra: one line, before any work
        self.out = Path(cfg.out_dir).expanduser()
        self.ckpt_dir = self.out / "checkpoints"
        latest = self.ckpt_dir / "latest.safetensors"
        if latest.exists() and not resume:
            raise UndiffuseError(f"{self.out} already holds a run; pass --resume to continue it "
                                 "or choose another out_dir")
        self.dist = distributed.setup(cfg.train.device)
        if self.dist.main:
            _check_writable(self.out)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.bf16 and not trains_in_bf16(cfg) and self.dist.main:
            log.warning("train.bf16: this %s has no native bf16 (AVX512-BF16 / AMX), where bf16 is many times slower "
                        "than fp32: training in fp32", "GPU" if cfg.train.device == "cuda" else "CPU")
        if (cfg.train.batch_size // cfg.train.grad_accum) % self.dist.world:
            raise UndiffuseError(f"the micro-batch (train.batch_size / train.grad_accum = "
                                 f"{cfg.train.batch_size // cfg.train.grad_accum}) must divide evenly over "
                                 f"{self.dist.world} processes")
        self.autoencoding = cfg.model.backbone == "autoencoder"  # training a latent space's codec, not a denoiser
        self.distilling = bool(cfg.distill.teacher) and not self.autoencoding  # a few-step student of a teacher
        if self.distilling:  # the teacher's trajectories are the data; the student lives in the teacher's space
            teacher = load_model(cfg.distill.teacher)
            if teacher.config.space.kind != cfg.space.kind:
                raise UndiffuseError(f"distill.teacher runs in {teacher.config.space.kind} space, this recipe in "
                                     f"{cfg.space.kind}: the student needs the teacher's [space]")
            theirs, ours = to_dict(teacher.config)["diffusion"], to_dict(cfg)["diffusion"]
            if theirs != ours:  # the student starts from the teacher's weights: same preconditioning
                differ = sorted(k for k in theirs if theirs[k] != ours.get(k))
                raise UndiffuseError(f"distill.teacher has another [diffusion] (diffusion.{', diffusion.'.join(differ)}"
                                     " differ); the student needs the teacher's")
            self.data = trajectory_data(cfg, teacher, progress=progress and self.dist.main)
            self.space = teacher.space
        else:
            self.data: TrainingData = data if data is not None else load_training_data(cfg)
            self.space = build_space(cfg) if self.data.dim is None and not self.autoencoding else None
        if not self.distilling and self.space is not None and self.space.kind == "latent":  # encoded once, cached
            self.data = encode_training_data(self.data, self.space, cfg, progress=progress and self.dist.main)
        self.num_classes = self.data.num_classes if cfg.data.conditional and not self.autoencoding else 0
        torch.manual_seed(cfg.train.seed)
        self.context_dim = getattr(self.data, "context_dim", 0) if cfg.data.conditional else 0
        self.net = build_net(cfg, self.num_classes, dim=self.data.dim, context_dim=self.context_dim,
                             shape=self.space.shape if self.space is not None else None).to(self.dist.device)
        if (cfg.train.init or self.distilling) and not resume:  # fine-tuning or distilling: a trained model's
            self._init_from(cfg.train.init or cfg.distill.teacher)  # weights, a fresh optimizer
        if cfg.train.channels_last and self.data.dim is None:
            self.net = self.net.to(memory_format=torch.channels_last)
        trained = self.net
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            trained = DistributedDataParallel(self.net)  # averages gradients over the ranks in backward
        self.trained = trained
        self.denoiser = build_denoiser(cfg, trained)
        self.schedule = build_schedule(cfg)
        self.ema = EMA(self.net, cfg.train.ema_decay)
        self._params = list(self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.order = DataOrder(len(self.data), cfg.train.seed)
        self.step = self.skipped = self.bad_in_row = 0
        self.seconds = 0.0  # wall time spent training, summed over resumes
        self.best_loss, self._window = math.inf, []  # mean loss between checkpoints, for best.safetensors
        self._stop_signal: int | None = None
        self.log: RunLog | None = None  # the run's loggers, open while :meth:`run` runs
        if resume:
            if not latest.exists():
                raise UndiffuseError(f"nothing to resume: {latest} does not exist")
            if self.dist.main:  # half-written files of a killed run (the files they replace are intact)
                for stale in self.ckpt_dir.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            self._restore(latest)

    def _micro_loss(self, start: int, micro: int) -> Tensor:
        """The loss of the micro-batch at data position ``start``: the autoencoder's, the distillation's (a
        trajectory's end from a state on it) or the denoising loss; this rank's share of the batch."""
        cfg, shard = self.cfg, self.dist.shard  # every rank draws the global micro-batch and keeps its share
        indices = self.order.indices(start, micro)
        if self.autoencoding:
            x0, _ = self.data.batch(indices, self.gen)
            with _autocast(cfg):
                return autoencoder_loss(self.trained, shard(x0), kl_weight=cfg.train.kl_weight, generator=self.gen)[0]
        if self.distilling:  # guidance is distilled in: no label dropout
            x, sigma, labels, end = self.data.pairs(indices, self.gen)
            with _autocast(cfg):
                return distillation_loss(self.denoiser, shard(x), shard(sigma),
                                         shard(labels) if self.num_classes else None, shard(end))
        x0, labels = self.data.batch(indices, self.gen)
        cond = None
        if self.context_dim:  # captions: drop to the empty prompt as often as labels would be dropped
            drop = torch.rand(micro, generator=self.gen) < cfg.train.label_dropout
            cond = {k: shard(v) for k, v in labels.where(drop, self.data.null).as_cond().items()}
        elif self.num_classes:
            drop = torch.rand(micro, generator=self.gen) < cfg.train.label_dropout
            cond = shard(torch.where(drop, torch.full_like(labels, -1), labels))
        sigma = shard(training_sigmas(cfg, self.schedule, micro, self.gen).to(torch.float32))
        noise = shard(torch.randn(x0.shape, generator=self.gen))
        x0 = shard(x0)
        if cfg.train.channels_last and x0.ndim == 4:
            x0, noise = x0.contiguous(memory_format=torch.channels_last), \
                noise.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg):
            return denoising_loss(self.denoiser, x0, sigma, cond, noise=noise,
                                  min_snr_gamma=cfg.diffusion.min_snr_gamma or None)

    # ------------------------------------------------------------------ one optimizer step
    def budget_done(self) -> float:
        """The fraction of the budget spent: of train.steps or of train.max_seconds, whichever is larger."""
        t = self.cfg.train
        return max(self.step / t.steps if t.steps else 0.0, self.seconds / t.max_seconds if t.max_seconds else 0.0)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        lr = learning_rate(cfg, self.step, self.budget_done())
        for group_ in self.opt.param_groups:
            group_["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        micro = cfg.train.batch_size // cfg.train.grad_accum
        total = 0.0
        if not self.net.training:  # (a recursive call per step costs a tiny net's run several per cent)
            self.net.train()
        for m in range(cfg.train.grad_accum):
            loss = self._micro_loss((self.step * cfg.train.grad_accum + m) * micro, micro)
            (loss / cfg.train.grad_accum).backward()
            total += float(loss.detach()) / cfg.train.grad_accum
        total = self.dist.mean(total)
        grad_norm = _grad_norm(self._params, cfg.train.grad_clip)
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            self.skipped += 1  # a non-finite step is skipped, never applied
            self.bad_in_row += 1
            self.opt.zero_grad(set_to_none=True)
        else:
            self.bad_in_row = 0
            self.opt.step()
            self.ema.update(self.net)
            self._window.append(total)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "lr": lr}

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to ``train.steps``; rank 0 writes the log, previews, checkpoints and the final export."""
        try:
            with self._signals():
                return self._run()
        except OSError as err:  # a full disk or a vanished folder mid-run: the last checkpoint is intact
            raise UndiffuseError(f"cannot write to {self.out}: {err.strerror or err}") from None
        finally:
            distributed.teardown()

    def _run(self) -> Path:
        cfg, main = self.cfg, self.dist.main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        self.log = RunLog(self.out, cfg.train.log, to_dict(cfg), cfg.name, self.step, enabled=main)
        by_time = not cfg.train.steps  # a time budget alone: the bar counts seconds
        bar = tqdm(total=cfg.train.max_seconds if by_time else cfg.train.steps,
                   initial=int(self.seconds) if by_time else self.step, disable=not (self.progress and main),
                   unit="s" if by_time else "step", dynamic_ncols=True, desc=cfg.name)
        summary = getattr(getattr(self.data, "data", None), "summary", "")
        if summary:  # skipped input files are named in the run's log too, never lost silently
            self.log.line({"step": self.step, "data": summary})
            bar.write(f"data: {summary}")
        t0, step0, seconds0 = time.perf_counter(), self.step, self.seconds
        try:
            while not cfg.train.steps or self.step < cfg.train.steps:
                if cfg.train.max_seconds and self.dist.any(self.seconds >= cfg.train.max_seconds):
                    if cfg.train.steps:  # stopped before the step budget (a time budget alone ends here anyway)
                        bar.write(f"time budget train.max_seconds = {cfg.train.max_seconds:g} s spent at step "
                                  f"{self.step}")
                    self.save()
                    break
                stats = self.train_step()
                if self.bad_in_row >= cfg.train.max_bad_steps:
                    latest = self.ckpt_dir / "latest.safetensors"
                    kept = f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was written"
                    raise UndiffuseError(f"{self.bad_in_row} steps in a row had a non-finite loss or gradient "
                                         f"(up to step {self.step}): the run diverged and stopped; {kept}. "
                                         "Try a lower train.lr or train.grad_clip > 0")
                self.seconds = seconds0 + time.perf_counter() - t0
                rate = (self.step - step0) * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
                if self.on_step is not None:
                    self.on_step(stats)
                bar.update(int(self.seconds) - bar.n if by_time else 1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{rate:.0f}", refresh=False)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    self.log.metrics(self.step, {**stats, "img_per_s": rate, "skipped": self.skipped,
                                                 "seconds": round(self.seconds, 1)})
                if main and cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                    self.preview()
                if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps:
                    self.save()
                if self.dist.any(self._stop_signal is not None):
                    path = self.save()
                    name = signal.Signals(self._stop_signal).name if self._stop_signal else "another process"
                    raise Interrupted(f"stopped by {name} at step {self.step}; checkpoint written to {path}")
        finally:
            bar.close()
            self.log.close()
        if main:
            self.export()
        self.dist.barrier()
        return self.out

    @contextlib.contextmanager
    def _signals(self):
        """Turn SIGINT/SIGTERM into a flag checked after each step (main thread only; restored after)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        def flag(signum, frame):
            self._stop_signal = signum
        old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    # ------------------------------------------------------------------ checkpoints
    def provenance(self) -> dict[str, Any]:
        """Where a checkpoint comes from, written into its safetensors header (:func:`~undiffuse.checkpoint.
        save_checkpoint`) and shown by `undiffuse info`: the recipe's hash, the data and its size, the steps taken and
        the versions that took them."""
        d = self.cfg.data
        data = {"toy": f"toy:{d.toy_set}", "folder": f"folder:{d.path}", "audio_folder": f"audio_folder:{d.path}",
                "clip_folder": f"clip_folder:{d.path}"}.get(d.name, d.name)
        if self.distilling:
            data = f"trajectories of {self.cfg.distill.teacher}"
        return {"recipe_hash": recipe_hash(self.cfg), "data": data, "data_size": len(self.data), "steps": self.step,
                "undiffuse_version": __version__, "torch_version": torch.__version__}

    def _meta(self) -> dict[str, Any]:
        return {"config": to_dict(self.cfg), "provenance": self.provenance(), "step": self.step,
                "skipped": self.skipped, "best_loss":
                self.best_loss if math.isfinite(self.best_loss) else None,
                "ema_updates": self.ema.updates, "seconds": self.seconds, "world_size": self.dist.world,
                "class_names": self.data.class_names[: self.num_classes], "context_dim": self.context_dim,
                "dim": self.data.dim, **({"autoencoder": self.space.meta()} if self._latent else {})}

    @property
    def _latent(self) -> bool:
        return self.space is not None and self.space.kind == "latent"

    def _tensors(self, state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """A state dict under ``prefix``, with the autoencoder of a latent model beside it."""
        return {**prefixed(state, prefix), **(self.space.tensors() if self._latent else {})}

    def save(self) -> Path:
        """Write checkpoints/step_N.safetensors and latest.safetensors, and best.safetensors when the mean
        training loss since the last checkpoint is the lowest yet; keep the newest few step files."""
        path = self.ckpt_dir / f"step_{self.step:08d}.safetensors"
        loss = sum(self._window) / len(self._window) if self._window else math.nan
        self._window = []
        if not self.dist.main:
            return path
        opt_tensors, opt_meta = optimizer_state(self.opt)
        tensors = {**self._tensors(self.net.state_dict(), "model"), **prefixed(self.ema.model.state_dict(), "ema"),
                   **prefixed(opt_tensors, "optim"),
                   "rng.torch": torch.get_rng_state(), "rng.gen": self.gen.get_state()}
        is_best = loss < self.best_loss
        self.best_loss = min(self.best_loss, loss) if math.isfinite(loss) else self.best_loss
        meta = {**self._meta(), "optimizer": opt_meta, "loss": loss if math.isfinite(loss) else None}
        save_checkpoint(path, tensors, meta)
        atomic_write(self.ckpt_dir / "latest.safetensors", lambda tmp: shutil.copyfile(path, tmp))
        if is_best:
            atomic_write(self.ckpt_dir / "best.safetensors", lambda tmp: shutil.copyfile(path, tmp))
        old = sorted(self.ckpt_dir.glob("step_*.safetensors"))[: -self.cfg.train.keep_checkpoints or None]
        for p in old:
            p.unlink(missing_ok=True)
        return path

    def _init_from(self, source: str) -> None:
        """The network (and so its EMA copy) starts from another model's EMA weights, e.g. to fine-tune on
        other data or captions, or to distil it; the [model] sections must match (dropout may differ)."""
        path = resolve_model_path(source)
        tensors, meta = load_checkpoint(path)
        if "config" not in meta:
            raise UndiffuseError(f"train.init: {path} carries no config; give a run folder or a model file")
        their_cfg = config_from_json(json.dumps(meta["config"]))
        theirs, ours = to_dict(their_cfg)["model"], to_dict(self.cfg)["model"]
        theirs["dropout"] = ours["dropout"]  # a training setting, not the architecture
        inflating = self.cfg.data.frames > 0 and not their_cfg.data.frames  # an image model into a video net
        if inflating:
            theirs["temporal"] = ours["temporal"]  # the image net has no temporal layers to match
        if theirs != ours:
            differ = sorted(k for k in theirs if theirs[k] != ours.get(k))
            raise UndiffuseError(f"train.init: {source} has another network (model.{', model.'.join(differ)} "
                                 "differ); fine-tuning needs the same [model] section")
        weights = group(tensors, "ema") or group(tensors, "model")
        if inflating:  # the image layers from the image model, the temporal ones zero: the image model per frame
            from .nets.video_unet import inflate
            inflate(self.net, weights)
            log.info("inflated the image model %s into the video net", path)
            return
        load_module_state(self.net, weights, what=f"train.init {source}")
        log.info("initialised from %s", path)

    def _restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        # settings added since the checkpoint was written take their defaults: an older run still resumes
        saved = to_dict(config_from_json(json.dumps(meta.get("config", {}))))
        now = to_dict(self.cfg)
        for section in ("data", "model", "space", "diffusion"):
            differ = [k for k in now[section] if saved[section].get(k) != now[section][k]]
            if differ:
                raise UndiffuseError(f"cannot resume: the [{section}] section differs from the checkpoint's "
                                     f"({', '.join(f'{section}.{k}' for k in differ)})")
        load_module_state(self.net, group(tensors, "model"), "model")
        load_module_state(self.ema.model, group(tensors, "ema"), "ema")
        load_optimizer_state(self.opt, group(tensors, "optim"), meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.gen"])
        self.step, self.skipped, self.ema.updates = meta["step"], meta["skipped"], meta["ema_updates"]
        self.seconds = float(meta.get("seconds", 0.0))
        self.best_loss = meta.get("best_loss") or math.inf
        log.info("resumed %s at step %d", path, self.step)

    def export(self) -> Path:
        """The EMA weights alone (what sampling needs) as model.safetensors, config in its metadata."""
        path = self.out / "model.safetensors"
        meta = self._meta()
        if self.autoencoding:  # the scale factor that makes the latents unit-variance, measured on the data
            sample = self.data.batch(self.order.indices(0, min(len(self.data), 2048)), torch.Generator())[0]
            meta["latent_scale"] = measure_scale(self.ema.model.eval(), sample.to(self.dist.device))
        save_checkpoint(path, self._tensors(self.ema.model.state_dict(), "ema"), meta)
        return path

    # ------------------------------------------------------------------ previews
    @torch.no_grad()
    def preview(self) -> Path | None:
        """A grid from the EMA weights: one row per class (guided) or n unconditional samples."""
        if self.data.dim is not None:
            return None  # vector data: the 2-D demo draws its own plots
        if self.autoencoding:
            return self.preview_reconstructions()
        cfg = self.cfg
        denoiser = build_denoiser(cfg, self.ema.model.eval())
        n_cls = min(self.num_classes, 10)
        per_row = 8 if n_cls else cfg.sample.n
        n = n_cls * per_row if n_cls else cfg.sample.n
        cond = torch.arange(n_cls).repeat_interleave(per_row) if n_cls else None
        if cond is not None:
            denoiser = CFGDenoiser(denoiser, cfg.sample.guidance)
        if self.context_dim:  # the first caption of the first n images, guided
            n = min(len(self.data), 16)
            cond = self.data.table[self.data.offsets[:n]].as_cond()
            denoiser = CFGDenoiser(denoiser, cfg.sample.guidance, uncond=null_text(self.data.null))
            cond = {k: v.to(self.dist.device) for k, v in cond.items()}
        sigmas = config_sigmas(cfg, cfg.sample.steps)
        gens = samplers.make_generators(range(n))
        x = samplers.randn((n, *self.space.shape), gens, device=self.dist.device) * float(sigmas[0])
        cond = cond.to(self.dist.device) if isinstance(cond, Tensor) else cond
        x = samplers.get(cfg.sample.sampler)(denoiser, x, sigmas, cond=cond, generator=gens)
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        params = {"model": cfg.name, "step": self.step, "sampler": cfg.sample.sampler, "steps": cfg.sample.steps,
                  "grid": cfg.sample.grid, "guidance": cfg.sample.guidance, "seeds": f"0-{n - 1}"}
        grid = make_grid(self.space.picture(x), nrow=per_row if n_cls else None)
        save_png(path, grid, params)
        if self.log is not None:
            self.log.image(self.step, "samples", grid)
        if self.space.kind == "spectrogram":  # and hear them: the clips in a row, class by class
            write_wav_sequence(path.with_suffix(".wav"), self.space.decode(x), self.space.rate, params)
        return path


    @torch.no_grad()
    def preview_reconstructions(self) -> Path:
        """An autoencoder's preview: 8 training images (top row) above their reconstructions (EMA weights)."""
        x = self.data.batch(torch.arange(min(8, len(self.data))), torch.Generator())[0].to(self.dist.device)
        model = self.ema.model.eval()
        recon = model.decode(model.encode(x)[0]).clamp(-1, 1)
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        grid = make_grid(torch.cat([x, recon]), nrow=len(x))
        save_png(path, grid, {"model": self.cfg.name, "step": self.step, "rows": "training images; their "
                              "reconstructions", "psnr": f"{float(psnr(recon, x).mean()):.2f}"})
        if self.log is not None:
            self.log.image(self.step, "reconstructions", grid)
        return path


def _grad_norm(params: list[Tensor], clip: float) -> float:
    """The global gradient norm, after clipping it to ``clip`` (> 0). Without clipping only the norm is taken:
    scaling every gradient by 1 costs a tiny net's step 5 %."""
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _check_writable(out: Path) -> None:
    """Fail before any work when the run folder cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UndiffuseError(f"cannot write to the run folder {out}: {err.strerror or err}") from None


def train(cfg: Config, resume: bool = False, progress: bool = True) -> Path:
    """Train a model from a config; returns the run folder."""
    return Trainer(cfg, resume=resume, progress=progress).run()
