"""One job, start to end: load the model, sample with a live x̂0 preview and a cancel check at every step, write
the PNGs with the package's own writers (each carries its parameters), and return the history record."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .. import tasks
from ..sampling import write_task_images
from ..data.folder import load_image_tensor
from ..errors import UndiffuseError
from ..images import make_grid, to_uint8
from ..models import LoadedModel
from ..nets.cpu import resolve_precision
from ..sampling import generate, request_sigmas, write_samples
from .catalogue import Catalogue
from .history import History
from .jobs import Job


def preview_png(images: Tensor) -> bytes:
    """(B, C, H, W) in [-1, 1] → one PNG grid."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(make_grid(images.detach().float().clamp(-1, 1)))).save(buf, format="PNG")
    return buf.getvalue()


class Watch:
    """Progress, ETA, previews and the cancel check of a running job, fed once per sampler step."""

    def __init__(self, job: Job, changed: Callable[[], None], model: LoadedModel, total: int,
                 shown: Callable[[Tensor], Tensor] = lambda images: images):
        self.job, self.changed, self.model, self.total, self.shown = job, changed, model, max(total, 1), shown
        self.every, self.steps, self.t0 = job.spec.preview_every, 0, None

    def step(self, x0_hat: Tensor | None) -> None:
        """One sampler step done."""
        self.job.check()
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        self.steps += 1
        done = min(self.steps / self.total, 0.999)
        job = self.job
        job.progress = done
        elapsed = now - self.t0
        job.eta = elapsed * (1 - done) / done if done > 0 and elapsed > 0 else None
        if x0_hat is not None and self.every and (self.steps == 1 or self.steps % self.every == 0):
            x0 = x0_hat[:job.spec.request.n].float()
            images = self.model.space.picture(x0)
            job.preview = preview_png(self.shown(images))
            job.preview_version += 1
            job.preview_step = self.steps
        self.changed()


def run_job(job: Job, catalogue: Catalogue, history: History, changed: Callable[[], None]) -> dict[str, Any]:
    """Run ``job``; its PNGs (a sound model's WAVs) go to its history folder; returns the history record."""
    spec, t0 = job.spec, time.time()
    job.phase = "loading model"
    changed()
    loaded = catalogue.load(spec.model)
    guide = catalogue.load(spec.guide) if spec.guide is not None else None
    job.check()
    req = spec.request
    req.precision = resolve_precision(req.precision)
    folder = history.folder(job.id)
    job.phase = "sampling"
    changed()
    if spec.task == "generate":
        total = math.ceil(req.n / req.batch_size) * (len(request_sigmas(loaded, req)) - 1)
        watch = Watch(job, changed, loaded, total)
        images, labels = generate(loaded, req, progress=False, guide=guide,
                                  callback=lambda i, sigma, x, x0_hat: watch.step(x0_hat))
        job.phase = "writing"
        changed()
        write_samples(loaded, req, images, labels, folder)
    else:
        _run_task(job, loaded, folder, changed)
    return history.save_record(job.id, {"created": job.created, "finished": time.time(),
                                        "seconds": round(time.time() - t0, 2), "task": spec.task,
                                        "model": spec.model.id, "model_source": loaded.source,
                                        "settings": spec.settings, "summary": job.to_dict()["summary"]})


def _run_task(job: Job, loaded: LoadedModel, folder: Path, changed: Callable[[], None]) -> None:
    """inpaint, upscale, edit or denoise with the package's task functions, watched through their callback."""
    spec, req, opts = job.spec, job.spec.request, job.spec.options
    size, channels = loaded.config.data.image_size, loaded.config.data.channels
    low_size = size // opts["factor"] if spec.task == "upscale" else size
    image = load_image_tensor(folder / "input.png", low_size, channels, error="cannot read the uploaded image")
    shown = lambda images: images
    if spec.task == "inpaint":
        hole = (load_image_tensor(folder / "mask.png", size, 1, error="cannot read the mask")[0] > 0).float()
        if not 0 < float(hole.mean()) < 1:
            raise UndiffuseError("the mask must have both white (fill) and black (keep) pixels: paint the part "
                                 "to fill, not all of it")
        known = 1 - hole
        shown = lambda images: known * image + hole * images
    watch = Watch(job, changed, loaded, req.steps, shown)
    step = lambda i, sigma, x, x0_hat: watch.step(x0_hat)
    if spec.task == "inpaint":
        result = tasks.inpaint(loaded, image, hole, req, resample=opts["resample"], callback=step)
    elif spec.task == "upscale":
        result = tasks.upscale(loaded, image, opts["factor"], req, strength=opts["strength"], callback=step)
    elif spec.task == "edit":
        result = tasks.edit(loaded, image, req, strength=opts["strength"], callback=step)
    else:
        result, used = tasks.denoise(loaded, image, req, sigma=opts["sigma"], callback=step)
        opts = {**opts, "sigma": round(used, 4)}
    job.phase = "writing"
    changed()
    extra: dict[str, Any] = {"task": spec.task, "image": "input.png",
                             **{k: v for k, v in opts.items() if v is not None}}
    if spec.task in ("inpaint", "upscale"):
        extra["grid"] = req.grid
    if spec.task == "inpaint":
        extra["mask"] = "mask.png"
    s = spec.settings
    for key in ("prompt", "class", "guidance", "autoguide"):
        if s.get(key) not in (None, ""):
            extra[key] = s[key]
    if torch.is_tensor(result):
        write_task_images(loaded, req, result, folder, extra)
