"""A job's request from the page or a script, checked field by field before it is queued: one readable
message for the first bad field, the model card's defaults for the fields left out."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from .. import samplers
from ..sampling import card_defaults, card_eps_scale, card_guidance_parallel, card_interval
from ..errors import UndiffuseError
from ..guidance import parse_interval
from ..models import config_sigmas
from ..nets.cpu import PRECISIONS
from ..process import DISTILLED_GRID, SIGMA_GRIDS
from ..sampling import SampleRequest, parse_class
from ..tasks.run import DENOISE_SAMPLER, DENOISE_STEPS
from .catalogue import Catalogue, ModelEntry
from .limits import MAX_N, MAX_PROMPT, MAX_SEED, MAX_STEPS, ApiError
from .uploads import read_mask, read_upload

TASKS = ("generate", "inpaint", "upscale", "edit", "denoise")
GRIDS = (*SIGMA_GRIDS, DISTILLED_GRID)
FIELDS = ("task", "model", "prompt", "class", "sampler", "grid", "steps", "n", "seed", "guidance", "sigma_min",
          "sigma_max", "rho", "clip_x0", "eps_scale", "guidance_interval", "guidance_rescale", "guidance_parallel",
          "autoguide", "precision", "preview_every", "image", "mask", "strength", "factor", "sigma", "resample")


@dataclass
class JobSpec:
    """What a job will run: the task, the model, the sampling request and the task's own options."""

    task: str
    model: ModelEntry
    request: SampleRequest
    settings: dict[str, Any]          # the form's fields, resolved (defaults filled, the seed drawn): JSON
    options: dict[str, Any] = field(default_factory=dict)   # strength, factor, sigma, resample
    image: bytes | None = None        # the uploaded image as PNG
    mask: bytes | None = None         # the painted mask as a greyscale PNG (white = fill)
    guide: ModelEntry | None = None   # the autoguidance model
    preview_every: int = 1            # a preview of x̂0 every this many steps (0: none)


def _number(body: dict, key: str, kind: type, lo: float, hi: float, default: Any) -> Any:
    value = body.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise ApiError(f"{key} must be a number, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(f"{key} must be a number, got {str(value)[:40]!r}")
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise ApiError(f"{key} must be a whole number, got {value}")
    if not math.isfinite(value) or not lo <= value <= hi:
        span = f"{lo:g} to {hi:g}" if math.isfinite(hi) else f"at least {lo:g}"
        raise ApiError(f"{key} must be {span} in the studio, got {value:g}")
    return kind(value)


def _bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(f"{key} must be true or false, got {str(value)[:40]!r}")
    return value


def _choice(body: dict, key: str, choices: tuple[str, ...] | list[str], default: str) -> str:
    value = body.get(key) or default
    if value != default and value not in choices:
        raise ApiError(f"unknown {key} {str(value)[:60]!r}; known: {', '.join(choices)}")
    return value


def _seed(body: dict) -> tuple[int, bool]:
    """(seed, drawn at random): null, "", "random" or -1 draws one."""
    value = body.get("seed")
    if value in (None, "", "random", -1, "-1"):
        return secrets.randbelow(2**32), True
    return _number(body, "seed", int, 0, MAX_SEED, 0), False


def _interval(value: Any) -> tuple[float, float] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        value = f"{value[0]},{value[1]}"
    if not isinstance(value, str):
        raise ApiError(f"guidance_interval must be LO,HI, got {str(value)[:40]!r}")
    return parse_interval(value)


def parse_job(body: Any, catalogue: Catalogue) -> JobSpec:
    """Check a job request (a JSON object) against the model it names; every refusal is an :class:`ApiError`."""
    if not isinstance(body, dict):
        raise ApiError("the request must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(f"unknown field {unknown[0][:40]!r}; known: {', '.join(FIELDS)}")
    try:
        return _parse(body, catalogue)
    except UndiffuseError as err:
        raise ApiError(str(err)) from None


def _parse(body: dict, catalogue: Catalogue) -> JobSpec:
    task = _choice(body, "task", TASKS, "generate")
    if not body.get("model"):
        raise ApiError("choose a model")
    entry = catalogue.get(body["model"])
    if task not in entry.tasks():
        raise ApiError(f"{entry.id} cannot {task} (its tasks: {', '.join(entry.tasks())})")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError("prompt must be text")
    if prompt and not entry.text:
        raise ApiError(f"{entry.id} is not text-conditioned: it takes a class, not a prompt")
    if prompt and len(prompt) > MAX_PROMPT:
        raise ApiError(f"the prompt has {len(prompt)} characters; the studio takes at most {MAX_PROMPT}")
    prompt = (prompt or "").strip() if entry.text else None
    cls = body.get("class")
    cls = None if cls in (None, "", "all") else str(cls)
    label = parse_class(entry, cls)
    if label is None and task != "generate" and entry.num_classes:
        label = -1  # as the CLI's tasks: no class is the model's unconditional half
    # the fields left out come from the model card's [sample] section, as in `undiffuse sample`; denoise's sampler
    # and steps from the task's own defaults, as in `undiffuse denoise`
    sampler, steps = body.get("sampler") or None, _number(body, "steps", int, 1, MAX_STEPS, None)
    if task == "denoise":
        sampler, steps = sampler or DENOISE_SAMPLER, steps or DENOISE_STEPS
    sampler, steps, grid, guidance = card_defaults(
        entry, sampler, steps, _choice(body, "grid", GRIDS, "") or None,
        _number(body, "guidance", float, -100, 100, None))
    samplers.info(sampler)  # an unknown name: its own message, naming the known ones
    n = 1 if task == "denoise" else _number(body, "n", int, 1, MAX_N, 4)
    seed, drawn = _seed(body)
    guided = bool(entry.text or entry.num_classes or body.get("autoguide"))
    guidance = 1.0 if task == "denoise" else guidance
    sigma_min = _number(body, "sigma_min", float, 1e-9, math.inf, None)
    sigma_max = _number(body, "sigma_max", float, 1e-9, math.inf, None)
    rho = _number(body, "rho", float, 0.01, 100, 7.0)
    eps_scale = card_eps_scale(entry, _number(body, "eps_scale", float, 0.01, 100, None))
    rescale = _number(body, "guidance_rescale", float, 0, 1, 0.0)
    parallel = card_guidance_parallel(entry, _number(body, "guidance_parallel", float, 0, 1, None))
    interval = card_interval(entry, _interval(body.get("guidance_interval")))
    precision = _choice(body, "precision", PRECISIONS, "auto")
    guide = catalogue.get(body["autoguide"], "autoguide model") if body.get("autoguide") else None
    config_sigmas(entry.config, steps, grid, sigma_min, sigma_max, rho)  # a grid that cannot be built: refused now
    request = SampleRequest(n=n, seed=seed, sampler=sampler, steps=steps, grid=grid, sigma_min=sigma_min,
                            sigma_max=sigma_max, rho=rho, clip_x0=_bool(body, "clip_x0", False), eps_scale=eps_scale,
                            label=label, prompt=prompt, guidance=guidance, guidance_interval=interval,
                            guidance_rescale=rescale, guidance_parallel=parallel,
                            autoguide=guide.source if guide else None,
                            precision=precision)
    auto_every = max(1, steps // 10)
    preview_every = _number(body, "preview_every", int, 0, MAX_STEPS, auto_every)
    options, image, mask = _task_options(task, body, entry)
    settings = {"task": task, "model": entry.id, "prompt": prompt, "class": cls, "sampler": sampler, "grid": grid,
                "steps": steps, "n": n, "seed": seed, "random_seed": drawn, "guidance": guidance if guided else None,
                "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho, "clip_x0": request.clip_x0,
                "eps_scale": eps_scale, "guidance_interval": list(interval) if interval else None,
                "guidance_rescale": rescale, "guidance_parallel": parallel,
                "autoguide": guide.id if guide else None, "precision": precision,
                "preview_every": preview_every, **options}
    return JobSpec(task, entry, request, settings, options, image, mask, guide, preview_every)


def _task_options(task: str, body: dict, entry: ModelEntry) -> tuple[dict, bytes | None, bytes | None]:
    """The options of an image task and its uploads; fields of other tasks are refused, not ignored."""
    own = {"inpaint": {"resample", "mask"}, "upscale": {"factor", "strength"}, "edit": {"strength"},
           "denoise": {"sigma"}, "generate": set()}[task]
    for key in ("resample", "mask", "factor", "strength", "sigma", "image"):
        if body.get(key) not in (None, "") and key not in own | ({"image"} if task != "generate" else set()):
            raise ApiError(f"{key} is not an option of {task}")
    if task == "generate":
        return {}, None, None
    if body.get("image") in (None, ""):
        raise ApiError(f"{task} needs an image: upload one")
    image = read_upload(body["image"])
    options: dict[str, Any] = {}
    mask = None
    if task == "inpaint":
        if body.get("mask") in (None, ""):
            raise ApiError("inpaint needs a mask: paint the part to fill")
        mask = read_mask(body["mask"])
        options["resample"] = _number(body, "resample", int, 0, 10, 0)
    elif task == "upscale":
        options["factor"] = _number(body, "factor", int, 2, 4, 2)
        if options["factor"] not in (2, 4) or entry.config.data.image_size % options["factor"]:
            raise ApiError(f"factor must be 2 or 4 and divide the model's size {entry.config.data.image_size}")
        options["strength"] = _number(body, "strength", float, 0.01, 1, 1.0)
    elif task == "edit":
        options["strength"] = _number(body, "strength", float, 0.01, 1, 0.6)
    elif task == "denoise":
        options["sigma"] = _number(body, "sigma", float, 1e-4, 100, None)
    return options, image, mask
