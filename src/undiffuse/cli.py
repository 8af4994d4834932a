"""The ``undiffuse`` command. User errors print one line, ``error: …``, and exit with status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import UndiffuseError

app = typer.Typer(help="undiffuse: denoising diffusion models you can train, understand and run on a CPU.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="Toy data set: two_moons, swiss_roll, eight_gaussians, checkerboard.")]
    = "two_moons",
    seconds: Annotated[float, typer.Option(help="Training time budget in seconds.")] = 60.0,
    train_steps: Annotated[int | None, typer.Option(help="Training step budget (stops at whichever comes first).")]
    = None,
    sampler: Annotated[str, typer.Option(help="Sampler name (see `undiffuse samplers`).")] = "dpmpp_2m",
    steps: Annotated[int, typer.Option(help="Sampling steps on the Karras σ grid.")] = 30,
    n: Annotated[int, typer.Option(help="Number of points to generate.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of data, weights and batches; sample i uses seed + i.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder for demo.png and demo.json.")] = Path("out/demo"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar while training.")] = True,
) -> None:
    """Train a small diffusion model on 2-D data, sample from it and draw the whole process in one PNG."""
    from .demo import run_demo
    from .train_toy import ToyConfig

    if n < 2 or steps < 1:
        raise UndiffuseError(f"need --n ≥ 2 and --steps ≥ 1, got --n {n} --steps {steps}")
    config = ToyConfig(data=data, seconds=seconds, steps=train_steps, seed=seed)
    result, png = run_demo(config, sampler=sampler, steps=steps, n=n, out=out, progress=progress)
    run, gen = result.run, result.generation
    typer.echo(f"trained {run.seconds:.0f} s: {run.steps:,} steps ({run.steps / run.seconds:.0f} steps/s), "
               f"loss {sum(run.losses[-200:]) / len(run.losses[-200:]):.3f}")
    typer.echo(f"sampled {n} points with {sampler}, {steps} steps, in {gen.seconds:.1f} s")
    typer.echo(f"distance to {n} fresh data points (lower is closer):")
    typer.echo(f"  {'':22}{'energy':>10}{'sliced W2':>11}")
    notes = {"fresh data": "what a perfect model scores", "noise": "where sampling starts"}
    labels = {"generated": "generated samples", "fresh data": "a fresh data set", "noise": "N(0, I) noise"}
    ed, sw = result.metrics["energy distance"], result.metrics["sliced Wasserstein"]
    for key, label in labels.items():
        note = f"   ({notes[key]})" if key in notes else ""
        typer.echo(f"  {label:22}{ed[key]:10.4f}{sw[key]:11.4f}{note}")
    typer.echo(f"wrote {png} and {png.with_suffix('.json')}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="A TOML recipe, e.g. configs/fashion-mnist.toml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.key=value "
                                                   "(TOML syntax), repeatable.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in out_dir from its latest checkpoint.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: the recipe's train.device). Under "
                                               "torchrun each process takes one device.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a diffusion model from a recipe; checkpoints, log.jsonl, samples and config.json go to out_dir.

    Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and exits; --resume continues.
    Data-parallel: torchrun --nproc_per_node N -m undiffuse train CONFIG.
    """
    from .config import load_config
    from .train import Interrupted
    from .train import train as run_training

    overrides = [*(set_ or []), *([f"train.device='{device}'"] if device else [])]
    cfg = load_config(config, overrides)
    try:
        out = run_training(cfg, resume=resume, progress=progress)
    except Interrupted as stop:
        again = " ".join(["undiffuse train", str(config), *(f"--set {o}" for o in set_ or []), "--resume"])
        typer.echo(f"{stop}; continue with: {again}", err=True)
        raise SystemExit(130) from None
    typer.echo(f"trained {cfg.name}: {out / 'model.safetensors'}")


# Options shared by `sample` and `generate`.
SamplerOpt = Annotated[str, typer.Option(help="Sampler name (see `undiffuse samplers`).")]
StepsOpt = Annotated[int, typer.Option(help="Sampling steps.")]
GridOpt = Annotated[str, typer.Option(help="σ grid: karras, exponential, leading, trailing, linspace, flow.")]
CardSamplerOpt = Annotated[str | None, typer.Option("--sampler", help="Sampler name (see `undiffuse samplers`), or as "
                                                    "the web UIs name it: \"Euler a\", \"DPM++ 2M Karras\" (which "
                                                    "picks the karras grid too). Default: the model card's.")]
CardStepsOpt = Annotated[int | None, typer.Option("--steps", help="Sampling steps (default: the model card's).")]
CardGridOpt = Annotated[str | None, typer.Option("--grid", help="σ grid: karras, exponential, leading, trailing, "
                                                 "linspace, flow; or Karras, Exponential, ComfyUI's simple, "
                                                 "ddim_uniform, normal (default: the model card's).")]
NOpt = Annotated[int, typer.Option(help="Number of images.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")]
GuidanceOpt = Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = plain conditional).")]
ModelGuidanceOpt = Annotated[float | None, typer.Option(
    help="Classifier-free guidance scale (1 = plain conditional; default: the model's recipe's).")]
OutOpt = Annotated[Path, typer.Option(help="Output folder: grid.png and one PNG per image.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show a progress bar.")]
PrecisionOpt = Annotated[str, typer.Option(help="The network's precision: bf16 (autocast; ~2.4× fp32 on a CPU "
                                           "with AVX512-BF16, bench/README.md), fp32, or auto: bf16 where the "
                                           "hardware has it natively. Sampler arithmetic is fp32 either way.")]
SigmaMinOpt = Annotated[float | None, typer.Option(help="Lowest nonzero σ of a karras/exponential grid "
                                                  "(default: the model's).")]
SigmaMaxOpt = Annotated[float | None, typer.Option(help="Highest σ of a karras/exponential grid (default: the "
                                                  "model's).")]
RhoOpt = Annotated[float, typer.Option(help="The Karras grid's exponent ρ.")]
ClipOpt = Annotated[bool, typer.Option(help="Clamp every x̂0 to [-1, 1].")]
EpsScaleOpt = Annotated[float | None, typer.Option(help="Divide the predicted noise by this (ε scaling; 1 = off). "
                                                   "Default: the model card's (its [sample] eps_scale, else 1).")]
IntervalOpt = Annotated[str | None, typer.Option(
    metavar="LO,HI", help="Guidance interval (Kynkäänniemi et al. 2024): guide only while σ is in [LO, HI] (σ of the "
    "model's space; HI may be inf); outside it one conditional evaluation per step instead of two. "
    "Default: the model card's ([sample] guidance_interval, else every σ); 0,inf guides at every σ.")]
RescaleOpt = Annotated[float, typer.Option(
    metavar="PHI", help="CFG rescale φ in [0, 1] (Lin et al. 2024): scale each guided x̂0 towards the conditional "
    "x̂0's standard deviation (φ = 1: exactly it); 0 = off.")]
ParallelOpt = Annotated[float | None, typer.Option(
    metavar="ETA", help="Adaptive projected guidance (Sadat et al. 2024): weigh the guidance update's component along "
    "the conditional x̂0 by ETA in [0, 1] (0: only the orthogonal part, against over-saturation; 1: classifier-free "
    "guidance as is). Default: the model card's ([sample] guidance_parallel, else 1).")]
AutoguideOpt = Annotated[str | None, typer.Option(
    metavar="MODEL", help="Autoguidance (Karras et al. 2024): guide with this weaker model of the same kind instead "
    "of the unconditional branch: a run folder, a checkpoint (RUN/checkpoints/step_*.safetensors) or a shipped "
    "name, same space and conditioning; --guidance is its weight. Default: off (classifier-free guidance).")]


def _guidance_options(interval: str | None, rescale: float, autoguide: str | None,
                      parallel: float | None = None) -> dict:
    """The SampleRequest fields of the guidance options, checked before any model is loaded."""
    from .guidance import parse_interval

    if not 0 <= rescale <= 1:
        raise UndiffuseError(f"--guidance-rescale must be in [0, 1], got {rescale}")
    return {"guidance_interval": parse_interval(interval) if interval is not None else None,
            "guidance_rescale": rescale, "autoguide": autoguide, "guidance_parallel": _checked_parallel(parallel)}


def _checked_parallel(parallel: float | None) -> float | None:
    """--guidance-parallel, refused in one line outside [0, 1] (None: the card's)."""
    if parallel is not None and not 0 <= parallel <= 1:
        raise UndiffuseError(f"--guidance-parallel must be in [0, 1], got {parallel}")
    return parallel


def _draw(loaded, req, out: Path, progress: bool) -> tuple[Path, float]:
    """Generate, write the PNGs (or WAVs); (grid path, seconds)."""
    import time

    from .sampling import generate as run_generate
    from .sampling import write_samples

    t0 = time.perf_counter()
    samples, labels = run_generate(loaded, req, progress=progress)
    return write_samples(loaded, req, samples, labels, out), time.perf_counter() - t0


FromPngOpt = Annotated[Path | None, typer.Option(
    "--from-png", metavar="FILE", help="Draw again what a PNG written by `undiffuse sample` or `generate` holds (one "
    "image, or a grid.png and its images), from the parameters in its JSON chunk: the same pixels on the same "
    "machine. Options given beside it change those parameters (e.g. --steps 50; MODEL: another model).")]

def _given(ctx: typer.Context) -> set[str]:
    """The parameters of this command set on the command line (not left at their defaults)."""
    return {name for name in ctx.params
            if (source := ctx.get_parameter_source(name)) is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")}


def _png_request(png: Path) -> tuple[str, dict, str | None]:
    """(model, SampleRequest fields, class name or None) from the JSON chunk of a PNG that `sample` / `generate`
    wrote: one image (its seed, n = 1) or a grid (its seed range). Anything else is refused in one line."""
    from dataclasses import fields

    from .images import read_params
    from .sampling import SampleRequest

    if not png.is_file():
        raise UndiffuseError(f"--from-png: no such file: {png}")
    try:
        params = read_params(png)
    except (OSError, ValueError) as err:
        raise UndiffuseError(f"--from-png: {png} is not a PNG with undiffuse parameters ({err})") from None
    if not isinstance(params, dict) or not params.get("model") or not ("seed" in params or "seeds" in params):
        raise UndiffuseError(f"--from-png: {png} carries no parameters of `undiffuse sample` or `generate` (only the "
                             "PNGs they write do)")
    if "task" in params:
        raise UndiffuseError(f"--from-png: {png} was made by `undiffuse {params['task']}` from an input image: run "
                             "that command again")
    known = {f.name for f in fields(SampleRequest)} - {"n", "batch_size", "label"}
    unknown = sorted(set(params) - known - {"model", "seed", "seeds", "class", "frames"})
    if unknown:
        raise UndiffuseError(f"--from-png: {png} has parameters this version does not know ({', '.join(unknown)})")
    request = {k: v for k, v in params.items() if k in known}
    if "seeds" in params:  # a grid: its whole seed range
        lo, _, hi = str(params["seeds"]).partition("-")
        if not (lo.isdigit() and hi.isdigit() and int(hi) >= int(lo)):
            raise UndiffuseError(f"--from-png: {png} has an unreadable seed range {params['seeds']!r}")
        request["seed"], request["n"] = int(lo), int(hi) - int(lo) + 1
    else:
        request["n"] = 1
    if request.get("guidance_interval") is not None:
        request["guidance_interval"] = tuple(request["guidance_interval"])
    cls = params.get("class")
    return str(params["model"]), request, None if cls in (None, "all, in turn") else str(cls)


def _request(ctx: typer.Context, model: str, class_: str | None, from_png: Path | None, options: dict):
    """The loaded model and the request of `sample` / `generate`: the options given, the rest from the model card, or
    with --from-png from the PNG's parameters (the options given on the command line win)."""
    from .models import load_model
    from .sampling import card_request, parse_class

    given = _given(ctx)
    if from_png is not None:
        from . import samplers

        source, request, cls = _png_request(from_png)
        request.update({k: v for k, v in options.items() if k in given})
        if "sampler" in given and "grid" not in given and samplers.resolve(options["sampler"])[1]:
            request["grid"] = None  # "--sampler 'DPM++ 2M Karras'" picks its grid over the PNG's
        loaded = load_model(model if "model" in given else source)
        class_ = class_ if "class_" in given else cls
    else:
        request, loaded = dict(options), load_model(model)
    return loaded, card_request(loaded, **request, label=parse_class(loaded, class_))


@app.command()
def sample(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint file, or a shipped model's name.")]
    = "fashion-mnist",
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, grid: CardGridOpt = None, n: NOpt = 16,
    seed: SeedOpt = 0,
    class_: Annotated[str | None, typer.Option("--class", help="Class name or index (default: all classes "
                                               "in turn, for a conditional model).")] = None,
    guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/samples"), progress: ProgressOpt = True,
    precision: PrecisionOpt = "auto",
    sigma_min: SigmaMinOpt = None, sigma_max: SigmaMaxOpt = None, rho: RhoOpt = 7.0,
    clip_x0: ClipOpt = False, eps_scale: EpsScaleOpt = None,
    guidance_interval: IntervalOpt = None, guidance_rescale: RescaleOpt = 0.0, guidance_parallel: ParallelOpt = None,
    autoguide: AutoguideOpt = None, from_png: FromPngOpt = None,
) -> None:
    """Generate images (a PNG grid and one PNG per sample) or sounds (one WAV per sample, all.wav of them in a row and
    a PNG grid of their spectrograms), each file carrying its parameters.

    --sampler and --grid take the web UIs' names too ("Euler a", "DPM++ 2M Karras", …: `undiffuse samplers`)."""
    from .nets.cpu import resolve_precision

    options = {"sampler": sampler, "steps": steps, "grid": grid, "n": n, "seed": seed, "guidance": guidance,
               "precision": resolve_precision(precision), "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho,
               "clip_x0": clip_x0, "eps_scale": eps_scale,
               **_guidance_options(guidance_interval, guidance_rescale, autoguide, guidance_parallel)}
    loaded, req = _request(ctx, model, class_, from_png, options)
    path, seconds = _draw(loaded, req, out, progress)
    what = {"spectrogram": "sounds", "video": "videos"}.get(loaded.space.kind, "images")
    again = f" (again, from {from_png})" if from_png is not None else ""
    typer.echo(f"sampled {req.n} {what}{again} with {req.sampler}, {req.steps} steps, in {seconds:.1f} s: {path}")


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="What to draw, e.g. \"a red heart\" (with --from-png: the "
                                                 "PNG's prompt unless given).")] = None,
    model: Annotated[str, typer.Option(help="A text-conditioned run folder, checkpoint or shipped model.")]
    = "emoji-dit",
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, grid: CardGridOpt = None, n: NOpt = 8,
    seed: SeedOpt = 0, guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/generate"),
    progress: ProgressOpt = True, precision: PrecisionOpt = "auto",
    sigma_min: SigmaMinOpt = None, sigma_max: SigmaMaxOpt = None, rho: RhoOpt = 7.0,
    clip_x0: ClipOpt = False, eps_scale: EpsScaleOpt = None,
    guidance_interval: IntervalOpt = None, guidance_rescale: RescaleOpt = 0.0, guidance_parallel: ParallelOpt = None,
    autoguide: AutoguideOpt = None, from_png: FromPngOpt = None,
) -> None:
    """Text to image: a PNG grid and one PNG per sample, each carrying its prompt and parameters.

    --sampler and --grid take the web UIs' names too ("Euler a", "DPM++ 2M Karras", …: `undiffuse samplers`)."""
    from .nets.cpu import resolve_precision

    if prompt is None and from_png is None:
        raise UndiffuseError("give a PROMPT (or --from-png FILE)")
    options = {"sampler": sampler, "steps": steps, "grid": grid, "n": n, "seed": seed, "guidance": guidance,
               "prompt": prompt, "precision": resolve_precision(precision), "sigma_min": sigma_min,
               "sigma_max": sigma_max, "rho": rho, "clip_x0": clip_x0, "eps_scale": eps_scale,
               **_guidance_options(guidance_interval, guidance_rescale, autoguide, guidance_parallel)}
    loaded, req = _request(ctx, model, None, from_png, options)
    if not loaded.text_conditioned:
        raise UndiffuseError(f"{loaded.source} is not text-conditioned; use `undiffuse sample` for it")
    path, seconds = _draw(loaded, req, out, progress)
    typer.echo(f"generated {req.n} images of {req.prompt!r} with {req.sampler}, {req.steps} steps, in {seconds:.1f} s: "
               f"{path}")


ModelOpt = Annotated[str, typer.Option(help="A run folder, a checkpoint file, or a shipped model's name.")]
ClassOpt = Annotated[str | None, typer.Option("--class", help="Class name or index (default: no class).")]
PromptOpt = Annotated[str | None, typer.Option(help="A prompt, for a text-conditioned model.")]


def _task_setup(model: str, class_: str | None, prompt: str | None, **kw):
    """The loaded model and a request for one of the tasks (no class: unconditional). Sampler, steps and guidance
    left out (None) are the model card's, as are its grid, guidance interval and projection and ε scaling: the
    tasks sample as `undiffuse sample` and the studio do."""
    from .models import load_model
    from .sampling import card_request, parse_class

    loaded = load_model(model)
    label = parse_class(loaded, class_)
    if label is None and loaded.num_classes:
        label = -1  # the "no class" token: the model's unconditional half
    return loaded, card_request(loaded, label=label, prompt=prompt, **kw)


def _load_input(path: Path, loaded, size: int | None = None):
    """An input image converted to the model's channels and size (centre crop + resize), in [-1, 1]."""
    from .data.folder import load_image_tensor
    return load_image_tensor(path, size or loaded.config.data.image_size, loaded.config.data.channels)


@app.command()
def inpaint(
    image: Annotated[Path, typer.Argument(help="The image (converted to the model's size and channels), or a sound "
                                          "clip for a sound model.")],
    mask: Annotated[Path | None, typer.Option(help="PNG mask: white = fill, black = keep (images).")] = None,
    gap: Annotated[str | None, typer.Option(help="START:END in seconds: the part of the clip to fill (sounds).")]
    = None,
    model: ModelOpt = "fashion-mnist", class_: ClassOpt = None, prompt: PromptOpt = None,
    resample: Annotated[int, typer.Option(help="RePaint-style re-noise/denoise rounds per step (0: off).")] = 0,
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, n: NOpt = 4, seed: SeedOpt = 0,
    guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/inpaint"),
) -> None:
    """Fill the white part of MASK in IMAGE (or the --gap of a sound clip); the rest is returned exactly as it was.

    In pixel space the known pixels are written into every estimate x̂0. In a latent model the latent cells whose
    pixels are all known are held instead, and the known pixels are pasted back after decoding: the kept region is
    exact, the border of the hole is the decoder's. In a sound model the spectrogram frames outside the gap are
    held, and the wave outside the gap is the input's."""
    from .tasks import inpaint as run_inpaint
    from .sampling import write_task_images

    loaded, req = _task_setup(model, class_, prompt, n=n, seed=seed, sampler=sampler, steps=steps,
                              guidance=guidance)
    if resample < 0:
        raise UndiffuseError(f"--resample must be ≥ 0, got {resample}")
    if loaded.space.kind == "spectrogram":
        from .tasks.sound_files import inpaint_file
        if gap is None:
            raise UndiffuseError("a sound model fills a gap in time: give --gap START:END (seconds)")
        typer.echo(inpaint_file(loaded, image, gap, req, out, resample=resample))
        return
    if mask is None:
        raise UndiffuseError("give --mask: a PNG, white where to fill")
    from .data.folder import load_image_tensor
    img = _load_input(image, loaded)
    hole = (load_image_tensor(mask, loaded.config.data.image_size, 1, error="cannot read the mask")[0] > 0).float()
    if not 0 < float(hole.mean()) < 1:
        raise UndiffuseError(f"the mask {mask} must have both white (fill) and black (keep) pixels")
    result = run_inpaint(loaded, img, hole, req, resample=resample)
    path = write_task_images(loaded, req, result, out, {"task": "inpaint", "image": str(image), "resample": resample})
    typer.echo(f"inpainted {n} versions: {path}")


@app.command()
def animate(
    image: Annotated[Path, typer.Argument(help="The first frame (converted to the model's size and channels).")],
    model: Annotated[str, typer.Option(help="A video model: run folder, checkpoint file or shipped name.")]
    = "moving-sprites",
    class_: ClassOpt = None,
    resample: Annotated[int, typer.Option(help="RePaint-style re-noise/denoise rounds per step (0: off).")] = 1,
    guide: Annotated[float, typer.Option(help="Reconstruction guidance weight on the other frames (0: off; one "
                                              "backward pass per step).")] = 5.0,
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, n: NOpt = 4, seed: SeedOpt = 0,
    guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/animate"),
) -> None:
    """Image-to-video: IMAGE is the first frame, the video model makes the rest (a GIF, an MP4 and a PNG strip per
    clip). The frame is written into every estimate x̂0 of the clip, as inpainting does over space, and the other
    frames are pulled toward agreeing with it (reconstruction guidance, Ho et al. 2022)."""
    from dataclasses import replace

    import torch

    from .sampling import write_videos
    from .tasks import animate as run_animate

    loaded, req = _task_setup(model, class_, None, n=n, seed=seed, sampler=sampler, steps=steps, guidance=guidance)
    if resample < 0:
        raise UndiffuseError(f"--resample must be ≥ 0, got {resample}")
    if loaded.space.kind != "video":
        raise UndiffuseError(f"{model} is not a video model: animate needs one (e.g. configs/moving-sprites.toml)")
    clips = run_animate(loaded, _load_input(image, loaded), req, resample=resample, guide=guide)
    asked = req.label if loaded.num_classes and req.label is not None and req.label >= 0 else None
    labels = torch.full((n,), asked) if asked is not None else None
    path = write_videos(loaded, replace(req, label=asked), clips, labels, out,
                        {"task": "image-to-video", "image": str(image), "resample": resample, "guide": guide})
    typer.echo(f"animated {n} clips from {image}: {path}")


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="The low-resolution image.")],
    factor: Annotated[int, typer.Option(help="2 or 4; the model's size is the output size.")] = 2,
    strength: Annotated[float, typer.Option(help="1: start from noise; < 1: from the enlarged input noised "
                                            "that far (faster, closer to the input).")] = 1.0,
    model: ModelOpt = "fashion-mnist", class_: ClassOpt = None, prompt: PromptOpt = None,
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, n: NOpt = 4, seed: SeedOpt = 0,
    guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/upscale"),
) -> None:
    """Super-resolution ×2 or ×4 whose output averages back down to the input exactly.

    The projection acts on pixels: in a latent model every estimate is decoded, projected and encoded again
    (one decode and encode per step), and the final image is projected once more."""
    from .tasks import upscale as run_upscale
    from .sampling import write_task_images

    loaded, req = _task_setup(model, class_, prompt, n=n, seed=seed, sampler=sampler, steps=steps,
                              guidance=guidance)
    size = loaded.config.data.image_size
    if factor not in (2, 4) or size % factor:
        raise UndiffuseError(f"--factor must be 2 or 4 and divide the model's size {size}, got {factor}")
    low = _load_input(image, loaded, size // factor)
    result = run_upscale(loaded, low, factor, req, strength=strength)
    path = write_task_images(loaded, req, result, out, {"task": "upscale", "image": str(image), "factor": factor})
    typer.echo(f"upscaled ×{factor} ({size // factor} → {size} px), {n} versions: {path}")


@app.command()
def edit(
    image: Annotated[Path, typer.Argument(help="The image to edit.")],
    strength: Annotated[float, typer.Option(help="How far to noise it, 0-1: more changes more.")] = 0.6,
    model: ModelOpt = "fashion-mnist", class_: ClassOpt = None, prompt: PromptOpt = None,
    sampler: CardSamplerOpt = None, steps: CardStepsOpt = None, n: NOpt = 4, seed: SeedOpt = 0,
    guidance: ModelGuidanceOpt = None, out: OutOpt = Path("out/edit"),
) -> None:
    """Image-to-image (SDEdit): noise IMAGE to STRENGTH and denoise it, towards --class or --prompt."""
    from .tasks import edit as run_edit
    from .sampling import write_task_images

    loaded, req = _task_setup(model, class_, prompt, n=n, seed=seed, sampler=sampler, steps=steps,
                              guidance=guidance)
    result = run_edit(loaded, _load_input(image, loaded), req, strength=strength)
    path = write_task_images(loaded, req, result, out, {"task": "edit", "image": str(image), "strength": strength})
    typer.echo(f"edited {n} versions at strength {strength}: {path}")


@app.command()
def denoise(
    image: Annotated[Path, typer.Argument(help="A noisy image, or a noisy recording for a sound model.")],
    sigma: Annotated[float | None, typer.Option(help="Noise σ on the [-1, 1] scale of the model's x "
                                                "(default: estimated).")] = None,
    model: ModelOpt = "fashion-mnist", class_: ClassOpt = None, prompt: PromptOpt = None,
    sampler: SamplerOpt = "dpmpp_2m", steps: StepsOpt = 10, seed: SeedOpt = 0,
    clean: Annotated[Path | None, typer.Option(help="Sound: the clean recording, to measure the improvement "
                                               "against.")] = None,
    out: OutOpt = Path("out/denoise"),
) -> None:
    """Remove noise: estimate its level σ, start the reverse process there.

    Images: pixel-space models only: a noisy image x0 + σε is the sampler's state at σ in pixel space, not in a
    latent space (a latent model is refused; its `edit` is the nearest thing). Sounds: noise of any kind added to a
    recording; σ is the estimated distance of its spectrogram from a clean one, and the reverse process starts from
    it noised to σ."""
    from .tasks import denoise as run_denoise
    from .sampling import write_task_images

    loaded, req = _task_setup(model, class_, prompt, n=1, seed=seed, sampler=sampler, steps=steps, guidance=1.0)
    if loaded.space.kind == "spectrogram":
        from .tasks.sound_files import denoise_file
        typer.echo(denoise_file(loaded, image, req, out, sigma=sigma, clean=clean))
        return
    if clean is not None:
        raise UndiffuseError("--clean is for sound models")
    result, used = run_denoise(loaded, _load_input(image, loaded), req, sigma=sigma)
    path = write_task_images(loaded, req, result, out, {"task": "denoise", "image": str(image),
                                                        "sigma": round(used, 4)})
    typer.echo(f"denoised at σ = {used:.3f} ({'given' if sigma is not None else 'estimated'}): {path}")


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint file, or a shipped model's name.")]
    = "fashion-mnist",
    image: Annotated[Path | None, typer.Option(help="Your own image (PNG, JPEG, WebP) for the forward process "
                                               "and the particle cloud (default: a training image).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder: index.html and its pictures.")] = Path("out/explain"),
    physics_seconds: Annotated[float, typer.Option(help="Training time of the 2-D particle model.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of every noise draw on the page.")] = 0,
    sound: Annotated[str | None, typer.Option(help="A sound model for the section on sound (default: the shipped "
                                              "spoken-digits model where installed; 'none' leaves it out).")]
    = None,
    video: Annotated[str | None, typer.Option(help="A video model for the section on video (default: the shipped "
                                              "moving-sprites model where installed; 'none' leaves it out).")]
    = None,
    text: Annotated[str | None, typer.Option(help="A text-conditioned model for the section on how a prompt steers "
                                             "(default: MODEL if it takes prompts, else the shipped emoji-dit; "
                                             "'none' leaves it out).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Write a page that shows how diffusion works, computed from the real process and a trained model."""
    from .explain import build_explainer
    from .model_files import shipped_models

    if physics_seconds <= 0:
        raise UndiffuseError(f"--physics-seconds must be positive, got {physics_seconds}")
    if sound is None:
        sound = "spoken-digits" if "spoken-digits" in shipped_models() else None
    if video is None:
        video = "moving-sprites" if "moving-sprites" in shipped_models() else None
    if text is None:
        text = "emoji-dit" if "emoji-dit" in shipped_models() else None
    page = build_explainer(model, image=image, out=out, physics_seconds=physics_seconds, seed=seed,
                           progress=progress, sound=None if sound == "none" else sound,
                           video=None if video == "none" else video, text=None if text == "none" else text)
    typer.echo(f"wrote {page} (open it in a browser; the pictures lie beside it)")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UndiffuseError(f"{what} must be comma-separated integers, e.g. 5,10,20, got {text!r}") from None
    if not values or min(values) < 1:
        raise UndiffuseError(f"{what} must be positive integers, got {text!r}")
    return values


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint file, or a shipped model's name.")]
    = "fashion-mnist",
    samplers_: Annotated[str | None, typer.Option("--samplers", help="Comma-separated sampler names (default: "
                                                  "ddim,dpmpp_2m; a video model's recipe's).")] = None,
    steps: Annotated[str | None, typer.Option(help="Comma-separated step counts (default: 5,10,20,50; a video "
                                              "model's recipe's).")] = None,
    n: Annotated[int, typer.Option(help="Generated images per setting, and real images per real set.")] = 1000,
    guidance: Annotated[float | None, typer.Option(help="Guidance of a class-conditional model "
                                                   "(default: its recipe's).")] = None,
    guidance_interval: IntervalOpt = None,
    grid: CardGridOpt = None,
    features: Annotated[str | None, typer.Option(help="Feature network: inception (FID) or classifier (the shipped "
                                                 "Fashion-MNIST classifier, or the spoken-digit judge for a sound "
                                                 "model). Default: inception for images, classifier for sounds.")]
    = None,
    likelihood: Annotated[int, typer.Option(help="Also bits/dim (VLB and probability-flow ODE) on this many "
                                            "held-out images (~20 s each on 2 CPU cores); 0: skip.")] = 0,
    animate: Annotated[int, typer.Option(help="A video model: also image-to-video from the first frames of this "
                                         "many real clips (given frame kept, motion continued); 0: skip.")] = 100,
    seed: SeedOpt = 0,
    sigma_min: SigmaMinOpt = None, sigma_max: SigmaMaxOpt = None, rho: RhoOpt = 7.0,
    clip_x0: ClipOpt = False, eps_scale: EpsScaleOpt = None, guidance_rescale: RescaleOpt = 0.0,
    guidance_parallel: ParallelOpt = None, autoguide: AutoguideOpt = None,
    out: Annotated[Path, typer.Option(help="Output folder: evaluation.json, table.txt, quality_vs_nfe.png.")]
    = Path("out/evaluate"),
    progress: ProgressOpt = True,
) -> None:
    """Measure sample quality against network evaluations: FID, KID, precision/recall, class accuracy per sampler;
    bits/dim with --likelihood. A 2-D toy model gets its exact NLL against the true density instead."""
    import json

    from .evaluation.evaluate import EvalSettings, sampling_options_given
    from .evaluation.evaluate import evaluate as run_evaluate
    from .guidance import parse_interval
    from .evaluation.report import table, write
    from .models import load_model

    loaded = load_model(model)
    options = {"sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho, "clip_x0": clip_x0, "eps_scale": eps_scale,
               "guidance_rescale": guidance_rescale,
               "guidance_parallel": _checked_parallel(guidance_parallel)}
    given = sampling_options_given(options)
    if autoguide is not None:
        given["autoguide"] = autoguide
    if (loaded.meta.get("dim") or loaded.space.kind == "video") and given:
        raise UndiffuseError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: image and sound models only "
                             "(a 2-D toy or video model is evaluated with its recipe's sampling)")
    if loaded.meta.get("dim"):
        from .evaluation.points import evaluate_points
        result = evaluate_points(loaded, n=n, seed=seed, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result.to_dict(), indent=2))
        typer.echo(result.table())
        typer.echo(f"wrote {out / 'evaluation.json'}")
        return
    if loaded.space.kind == "video":
        from .evaluation.video import evaluate_animate, evaluate_video
        if animate < 0:
            raise UndiffuseError(f"--animate must be ≥ 0, got {animate}")
        names = [s.strip() for s in (samplers_ or "").split(",") if s.strip()]
        counts = _int_list(steps, "--steps") if steps else []
        if len(names) > 1 or len(counts) > 1:
            raise UndiffuseError("a video model is evaluated at one setting: give one --samplers and one --steps")
        clip_result = evaluate_video(loaded, n=n, sampler=names[0] if names else None,
                                     steps=counts[0] if counts else None,
                                     guidance=guidance, seed=seed, progress=progress)
        result = clip_result.to_dict()
        typer.echo(clip_result.table())
        typer.echo("FVD: not measured (it needs an I3D network, which is not available offline)")
        if animate:
            moved = evaluate_animate(loaded, n=animate, sampler=names[0] if names else None,
                                     steps=counts[0] if counts else None, guidance=guidance, seed=seed,
                                     progress=progress)
            result["image_to_video"] = moved.to_dict()
            typer.echo(moved.table())
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {out / 'evaluation.json'}")
        return
    settings = EvalSettings(samplers=[s.strip() for s in (samplers_ or "ddim,dpmpp_2m").split(",") if s.strip()],
                            steps=_int_list(steps or "5,10,20,50", "--steps"), n=n, guidance=guidance, seed=seed,
                            features=features, likelihood=likelihood, grid=grid,
                            guidance_interval=parse_interval(guidance_interval) if guidance_interval else None,
                            autoguide=autoguide, **options)
    if not settings.samplers:
        raise UndiffuseError("--samplers names no sampler")
    result = run_evaluate(loaded, settings, progress=progress)
    paths = write(result, out)
    typer.echo(table(result))
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command()
def studio(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but 127.0.0.1 / localhost lets other "
                                      "machines use the studio (it has no login): warned.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    runs: Annotated[Path, typer.Option(help="Folder of training runs: their models join the shipped ones, and the "
                                       "dashboard follows them.")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="The studio's own folder: the history of results (PNGs with their "
                                      "parameters) lives in OUT/history.")] = Path("out/studio"),
) -> None:
    """A local web app: generate with a live preview, a queue, a history, image tasks and a training dashboard."""
    try:
        from .studio import serve
    except ImportError as err:
        raise UndiffuseError(f"the studio needs {err.name}: pip install 'undiffuse[studio]'") from None
    serve(host, port, runs, out)


@app.command(name="samplers")
def list_samplers(
    aliases: Annotated[bool, typer.Option("--aliases", help="List every accepted name instead: the web UIs' "
                                          "(A1111, ComfyUI) and the σ grids' ones.")] = False,
) -> None:
    """List the registered samplers: order as an ODE solver, whether they draw noise, the web UIs' name, what they are.

    Every command that takes a sampler takes its web-UI name too ("Euler a", "DPM++ 2M"); `sample`, `generate` and
    the studio also take it with " Karras" or " Exponential", which picks that σ grid ("DPM++ 2M Karras")."""
    from . import samplers

    if aliases:
        typer.echo(f"{'name':26}means")
        for name in samplers.names():
            for alias in samplers.aliases(name):
                typer.echo(f"{alias:26}{name}")
        typer.echo(f"{'<name> Karras':26}that sampler on the karras grid, e.g. \"DPM++ 2M Karras\" (sample, generate, "
                   "studio)")
        typer.echo(f"{'<name> Exponential':26}that sampler on the exponential grid, e.g. \"DPM++ 2M SDE Exponential\"")
        for alias, grid in (("Karras", "karras"), ("Exponential", "exponential"), ("simple", "trailing"),
                            ("ddim_uniform", "leading"), ("normal", "linspace")):
            typer.echo(f"{'--grid ' + alias:26}the {grid} grid")
        return
    typer.echo(f"{'name':17}{'order':>6}  {'stochastic':11} {'web UI':14}summary")
    for name in samplers.names():
        info = samplers.info(name)
        order = "-" if info.order is None else str(info.order)
        webui = samplers.WEBUI_NAMES.get(name, "-")
        typer.echo(f"{name:17}{order:>6}  {'yes' if info.stochastic else 'no':11} {webui:14}{info.summary}")


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint file, or a shipped model's name.")]
    = "fashion-mnist",
) -> None:
    """Print a model's card: its space, backbone, parameterisation, size, classes or text, the sampler settings it was
    measured with, and where it comes from (recipe hash, data, steps, versions), read from the file's header."""
    from .model_info import model_card

    rows = model_card(model)
    width = max(len(label) for label, _ in rows) + 2
    for label, text in rows:
        typer.echo(f"{label:{width}}{text}")


from .interop.cli import export  # noqa: E402  (a command defined in its own module)

app.command()(export)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``undiffuse`` script and of ``python -m undiffuse``."""
    try:  # typer ≥ 0.24 carries its own copy of click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    try:
        code = app(args=argv, prog_name="undiffuse", standalone_mode=False)
    except UndiffuseError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except click.NoArgsIsHelpError as err:  # bare `undiffuse` or a bare sub-command: its help
        print(err.ctx.get_help() if err.ctx else err.format_message())
        raise SystemExit(0) from None
    except click.UsageError as err:  # a mistyped option or value: one line, and where the help is
        where = f"; see: {err.ctx.command_path} --help" if err.ctx else ""
        print(f"error: {err.format_message()}{where}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        raise SystemExit(130) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
