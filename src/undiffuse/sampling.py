"""Generate from a trained model: seeds, classes, guidance → tensors, and PNG files (images) or WAVs (sounds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import samplers
from .errors import UndiffuseError
from .denoiser import shaped, with_precision
from .guidance import AutoguidedDenoiser, CFGDenoiser, GuidanceInterval, check_guide, null_text
from .data.audio import write_wav, write_wav_sequence
from .images import make_grid, save_png
from .models import LoadedModel, load_model
from .nets.cpu import DEFAULT_INFERENCE_PRECISION, keep_freed_memory


@dataclass
class SampleRequest:
    """What to draw: n samples with seeds seed, seed+1, …; a class or all classes in turn."""

    n: int = 16
    seed: int = 0
    sampler: str = "dpmpp_2m"
    steps: int = 20
    grid: str = "karras"
    sigma_min: float | None = None  # the grid's σ range (karras, exponential); None: the model's own
    sigma_max: float | None = None
    rho: float = 7.0              # the Karras grid's exponent
    clip_x0: bool = False         # clamp every x̂_0 to [-1, 1] (DDPM's clip_sample)
    eps_scale: float = 1.0        # divide ε̂ by this (ε scaling; 1: off)
    label: int | None = None      # None: unconditional, or every class in turn for a conditional model
    prompt: str | None = None     # for a text-conditioned model ("" or None: unconditional)
    guidance: float = 2.0         # the guidance weight w: classifier-free, or of autoguidance with `autoguide`
    # Guide only for σ in [lo, hi] (Kynkäänniemi et al. 2024); elsewhere one conditional evaluation. None: every σ.
    guidance_interval: tuple[float, float] | None = None
    guidance_rescale: float = 0.0  # CFG rescale φ of the guided x̂0's std (Lin et al. 2024); 0: off
    guidance_parallel: float = 1.0  # weight of the update's part along the conditional x̂0 (APG's η); 1: off
    # Autoguidance (Karras et al. 2024): a weaker model of the same kind (run folder, checkpoint file or shipped
    # name) is the negative instead of the unconditional branch. None: classifier-free guidance.
    autoguide: str | None = None
    batch_size: int = 64
    # "bf16": the network under bf16 autocast, "fp32": all fp32; the sampler's arithmetic is fp32 either way.
    precision: str = DEFAULT_INFERENCE_PRECISION


def parse_class(model: LoadedModel, text: str | None) -> int | None:
    """A class given by name (case-insensitive) or index → its index."""
    if text is None:
        return None
    if not model.num_classes:
        raise UndiffuseError(f"{model.source} is unconditional: it has no classes")
    names = [c.lower() for c in model.class_names]
    if text.lower() in names:
        return names.index(text.lower())
    if text.lstrip("-").isdigit() and 0 <= int(text) < model.num_classes:
        return int(text)
    raise UndiffuseError(f"unknown class {text!r}; known: {', '.join(model.class_names)} "
                         f"(or an index 0-{model.num_classes - 1})")


def labels_for(model: LoadedModel, req: SampleRequest) -> Tensor | None:
    """Per-sample labels: the requested class, or classes 0, 1, … in turn, or None."""
    if not model.num_classes:
        return None
    if req.label is not None:
        return torch.full((req.n,), req.label, dtype=torch.long)
    return torch.arange(req.n) % model.num_classes


def load_guide(model: LoadedModel, name: str | None) -> LoadedModel | None:
    """The autoguidance model ``name`` names (None: classifier-free guidance), checked against ``model``."""
    if name is None:
        return None
    guide = load_model(name)
    check_guide(model, guide)
    return guide


def guided_denoiser(model: LoadedModel, req: SampleRequest,
                    guide: LoadedModel | None = None) -> tuple[Callable[..., Tensor], Tensor | None, Any]:
    """The denoiser to sample with, the per-sample labels (or None) and the prompt's embedding (or None).

    Guided for a class or prompt by classifier-free guidance, or by autoguidance with ``guide`` (default: the
    model ``req.autoguide`` names, loaded here; checked by :func:`~undiffuse.guidance.check_guide`), in
    ``req.guidance_interval`` with ``req.guidance_rescale`` and ``req.guidance_parallel``. The networks run in
    ``req.precision``; the guidance mix, like everything outside the networks, in fp32."""
    labels = labels_for(model, req)
    base = with_precision(model.denoiser, req.precision)
    interval = None
    if req.guidance_interval is not None:
        if len(req.guidance_interval) != 2:
            raise UndiffuseError(f"the guidance interval must be (lo, hi), got {req.guidance_interval!r}")
        interval = GuidanceInterval(*(float(v) for v in req.guidance_interval))
    options = {"interval": interval, "rescale": req.guidance_rescale, "parallel": req.guidance_parallel}
    text = null = None
    if model.text_conditioned:
        encoder = model.text_encoder()
        text, null = encoder([req.prompt or ""]), encoder([""])
    if guide is None:
        guide = load_guide(model, req.autoguide)
    else:
        check_guide(model, guide)
    if guide is not None:
        denoiser = AutoguidedDenoiser(base, with_precision(guide.denoiser, req.precision), req.guidance, **options)
    elif text is not None:
        denoiser = CFGDenoiser(base, req.guidance, uncond=null_text(null), **options)
    elif labels is not None:
        denoiser = CFGDenoiser(base, req.guidance, **options)
    else:
        denoiser = base
    return shaped(denoiser, req.eps_scale, req.clip_x0), labels, text


def request_sigmas(model: LoadedModel, req: SampleRequest) -> Tensor:
    """The σ grid a request asks for: its grid, steps, σ range and ρ."""
    return model.sigmas(req.steps, req.grid, req.sigma_min, req.sigma_max, req.rho)


def cond_for(labels: Tensor | None, text: Any, rows: range) -> Any:
    """The condition of samples ``rows``: their labels, the prompt's embedding repeated, or None."""
    if text is not None:
        return text.expand(len(rows)).as_cond()
    return labels[rows.start:rows.stop] if labels is not None else None


@torch.no_grad()
def generate(model: LoadedModel, req: SampleRequest, progress: bool = True,
             callback: Callable[..., Any] | None = None,
             guide: LoadedModel | None = None) -> tuple[Tensor, Tensor | None]:
    """(n, C, H, W) images in [-1, 1]; sample i depends only on seed + i (and its class).

    ``callback(i, σ, x, x0_hat)`` is called at every step of every batch, as by the samplers; x and x0_hat are in
    the model's space (``model.space.decode(x0_hat)`` previews a latent model's image). The result is decoded.
    The network runs in ``req.precision``; ``guide`` is an autoguidance model already loaded (default: the one
    ``req.autoguide`` names, if any). Also makes this process keep freed memory for reuse
    (:func:`~undiffuse.nets.cpu.keep_freed_memory`): at batch 64 with guidance, activations over 32 MiB
    were page-faulted in afresh at every step (per step 1.39× faster in fp32, 1.09× in bf16; bench/README.md).
    """
    if req.n < 1 or req.steps < 1:
        raise UndiffuseError(f"n and steps must be positive, got n={req.n}, steps={req.steps}")
    if not math.isfinite(req.guidance):
        raise UndiffuseError(f"guidance must be a finite number, got {req.guidance}")
    if req.prompt is not None and not model.text_conditioned:
        raise UndiffuseError(f"{model.source} is not text-conditioned: it takes no prompt")
    sampler = samplers.get(req.sampler)
    sigmas = request_sigmas(model, req)
    denoiser, labels, text = guided_denoiser(model, req, guide)
    keep_freed_memory()
    shape = model.space.shape  # (C, H, W) of the space it samples in: pixels, or an autoencoder's latents
    out = []
    starts = range(0, req.n, req.batch_size)
    bar = tqdm(total=len(starts) * (len(sigmas) - 1), disable=not progress, desc=f"sampling {req.n}",
               unit="step", leave=False)

    def step(*args: Any) -> None:
        bar.update(1)
        if callback is not None:
            callback(*args)

    with bar:
        for start in starts:
            idx = range(start, min(start + req.batch_size, req.n))
            gens = samplers.make_generators([req.seed + i for i in idx])
            x = samplers.randn((len(idx), *shape), gens) * float(sigmas[0])
            cond = cond_for(labels, text, idx)
            out.append(model.space.decode(sampler(denoiser, x, sigmas, cond=cond, generator=gens, callback=step)))
    return torch.cat(out), labels


def _output_params(model: LoadedModel, req: SampleRequest, labels: Tensor | None) -> dict[str, Any]:
    """The parameters every output of a request carries (the options that took effect)."""
    base = {"model": model.source, **{k: v for k, v in asdict(req).items() if k not in ("n", "batch_size", "label")}}
    if not model.text_conditioned:
        base.pop("prompt")
    unguided = labels is None and not model.text_conditioned and req.autoguide is None
    for key, off in (("guidance", unguided), ("guidance_interval", unguided or req.guidance_interval is None),
                     ("guidance_rescale", unguided or not req.guidance_rescale),
                     ("guidance_parallel", unguided or req.guidance_parallel == 1.0),
                     ("autoguide", req.autoguide is None)):
        if off:
            base.pop(key)
    return base


def _each_output(model: LoadedModel, req: SampleRequest, labels: Tensor | None, count: int, base: dict[str, Any]):
    """(file stem, parameters) of each sample: its seed, and its class where it has one."""
    for i in range(count):
        params = {**base, "seed": req.seed + i}
        name = f"{i:04d}_seed{req.seed + i}"
        if labels is not None:
            params["class"] = model.class_names[int(labels[i])]
            name += f"_{params['class']}"
        yield _safe(name), params


def _grid_layout(model: LoadedModel, req: SampleRequest, labels: Tensor | None, count: int,
                 base: dict[str, Any]) -> tuple[int | None, list[str] | None, dict[str, Any]]:
    """(columns, column labels, parameters) of the grid of all samples: one column per class when all are drawn."""
    nrow = model.num_classes if labels is not None and req.label is None and req.n >= model.num_classes else None
    params = {**base, "seeds": f"{req.seed}-{req.seed + count - 1}"}
    if labels is not None:
        params["class"] = model.class_names[req.label] if req.label is not None else "all, in turn"
    return nrow, (model.class_names if nrow else None), params


def write_images(model: LoadedModel, req: SampleRequest, images: Tensor, labels: Tensor | None,
                 out_dir: str | Path) -> Path:
    """grid.png plus one PNG per sample, each with its parameters in a text chunk."""
    out = Path(out_dir)
    base = _output_params(model, req, labels)
    for img, (name, params) in zip(images, _each_output(model, req, labels, len(images), base), strict=True):
        save_png(out / f"{name}.png", img, params)
    nrow, labels_row, grid_params = _grid_layout(model, req, labels, len(images), base)
    return save_png(out / "grid.png", make_grid(images, nrow=nrow), grid_params, scale=2, column_labels=labels_row)


def write_sounds(model: LoadedModel, req: SampleRequest, waves: Tensor, labels: Tensor | None,
                 out_dir: str | Path) -> Path:
    """One WAV per sample carrying its parameters (LIST/INFO/ICMT), all.wav with every clip in a row, and
    spectrograms.png: the grid of each clip's spectrogram as it sounds (the decoded wave encoded again)."""
    out, space = Path(out_dir), model.space
    base = _output_params(model, req, labels)
    for wave, (name, params) in zip(waves, _each_output(model, req, labels, len(waves), base), strict=True):
        write_wav(out / f"{name}.wav", wave, space.rate, params)
    nrow, labels_row, grid_params = _grid_layout(model, req, labels, len(waves), base)
    write_wav_sequence(out / "all.wav", waves, space.rate, grid_params)
    return save_png(out / "spectrograms.png", make_grid(space.picture(space.encode(waves)), nrow=nrow), grid_params,
                    scale=2, column_labels=labels_row)


def write_videos(model: LoadedModel, req: SampleRequest, clips: Tensor, labels: Tensor | None,
                 out_dir: str | Path, extra: dict | None = None) -> Path:
    """Per sample a looping GIF, an MP4 and a PNG strip of its frames, each carrying its parameters (and
    ``extra``, e.g. a task's); grid.png with one strip per row."""
    from .video_files import write_gif, write_mp4

    out, space = Path(out_dir), model.space
    base = {**_output_params(model, req, labels), "frames": space.frames, **(extra or {})}
    strips = space.picture(clips)
    for clip, strip, (name, params) in zip(clips, strips, _each_output(model, req, labels, len(clips), base),
                                           strict=True):
        write_gif(out / f"{name}.gif", clip, params)
        write_mp4(out / f"{name}.mp4", clip, params)
        save_png(out / f"{name}.png", strip, params, scale=2)
    _, _, grid_params = _grid_layout(model, req, labels, len(clips), base)
    return save_png(out / "grid.png", make_grid(strips, nrow=1), grid_params, scale=2)


def write_samples(model: LoadedModel, req: SampleRequest, samples: Tensor, labels: Tensor | None,
                  out_dir: str | Path) -> Path:
    """What :func:`generate` returned, written as its kind is kept: PNGs of images, WAVs of sounds, GIFs and MP4s
    of videos; the grid's path."""
    write = {"spectrogram": write_sounds, "video": write_videos}.get(model.space.kind, write_images)
    return write(model, req, samples, labels, out_dir)


def card_defaults(loaded: LoadedModel, sampler: str | None, steps: int | None, grid: str | None,
                  guidance: float | None) -> tuple[str, int, str, float]:
    """The options left out, from the model card's [sample] section (the settings it was measured with).

    Sampler and grid may be named as the web UIs name them (:func:`~undiffuse.samplers.resolve`): "Euler a", and
    "DPM++ 2M Karras", which picks the karras grid too; the names returned are ours."""
    card = loaded.config.sample
    name, picked = samplers.resolve(sampler or card.sampler)
    asked = samplers.resolve_grid(grid) if grid else None
    if picked and asked and picked != asked:
        raise UndiffuseError(f"the sampler name {sampler!r} picks the {picked} σ grid, but the grid asked for is "
                             f"{grid!r}: give one of them")
    return (name, card.steps if steps is None else steps, asked or picked or card.grid,
            card.guidance if guidance is None else guidance)


def describe_guidance(guidance: float, interval: tuple[float, float] | None) -> str:
    """"guidance 2", or "guidance 2 for σ in [0.3, 5]" with a guidance interval: as reports and figures name it."""
    return f"guidance {guidance:g}" + (" for σ in [{:g}, {:g}]".format(*interval) if interval else "")


def card_interval(loaded: LoadedModel, interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """The guidance interval asked for, or the model card's (``[sample] guidance_interval``; none: every σ)."""
    if interval is not None:
        return interval
    card = loaded.config.sample.guidance_interval
    return (float(card[0]), float(card[1])) if card else None


def card_eps_scale(loaded: LoadedModel, eps_scale: float | None) -> float:
    """The ε scaling asked for, or the model card's (``[sample] eps_scale``; 1: off)."""
    return float(loaded.config.sample.eps_scale) if eps_scale is None else eps_scale


def card_guidance_parallel(loaded: LoadedModel, parallel: float | None) -> float:
    """The guidance's parallel weight η asked for, or the model card's (``[sample] guidance_parallel``; 1: off)."""
    return float(loaded.config.sample.guidance_parallel) if parallel is None else parallel


def card_request(loaded: LoadedModel, *, sampler: str | None = None, steps: int | None = None,
                 grid: str | None = None, guidance: float | None = None,
                 guidance_interval: tuple[float, float] | None = None, eps_scale: float | None = None,
                 guidance_parallel: float | None = None, **fields: Any) -> SampleRequest:
    """A request whose sampling settings left out (None) are the model card's: :func:`card_defaults`,
    :func:`card_interval`, :func:`card_eps_scale` and :func:`card_guidance_parallel`; ``fields`` as given."""
    sampler, steps, grid, guidance = card_defaults(loaded, sampler, steps, grid, guidance)
    return SampleRequest(sampler=sampler, steps=steps, grid=grid, guidance=guidance,
                         guidance_interval=card_interval(loaded, guidance_interval),
                         eps_scale=card_eps_scale(loaded, eps_scale),
                         guidance_parallel=card_guidance_parallel(loaded, guidance_parallel), **fields)


TASK_RECORDED = ("eps_scale", "prompt", "guidance", "guidance_interval", "guidance_rescale", "guidance_parallel",
                 "autoguide")


def write_task_images(loaded: LoadedModel, req: SampleRequest, images: Tensor, out: Path, extra: dict) -> Path:
    """One PNG per result of an image task and their grid, each carrying the task's parameters: the sampler, the
    guidance that took effect (as `sample` records it) and the ε scaling; the σ grid is the task's own."""
    labels = torch.tensor([req.label]) if req.label is not None and req.label >= 0 else None
    taken = _output_params(loaded, req, labels)
    params = {"model": loaded.source, "sampler": req.sampler, "steps": req.steps, "seed": req.seed,
              **{k: taken[k] for k in TASK_RECORDED if k in taken}, **extra}
    for i, img in enumerate(images):
        save_png(out / f"{i:04d}_seed{req.seed + i}.png", img, {**params, "seed": req.seed + i})
    return save_png(out / "grid.png", make_grid(images), params, scale=2)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
