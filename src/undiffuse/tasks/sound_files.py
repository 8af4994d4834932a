"""The sound tasks from and to files: read a user's clip, run the task, write WAVs and a picture, measure.

What `undiffuse denoise` and `undiffuse inpaint` do when the model is a sound model. A clip is mixed to mono,
resampled to the model's rate and peak-normalised as the training clips were, but neither trimmed nor centred,
so that times given on the command line are times in the file; a clip shorter than the model's length is
padded with silence at its end, and the results are cut back to the clip's own length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.audio import PEAK, prepare_clip, read_audio, write_wav
from ..errors import UndiffuseError
from ..images import make_grid, save_png
from ..models import LoadedModel
from ..sampling import SampleRequest
from ..spaces.spectrogram import log_spectral_distance
from .sound import denoise_sound, gap_distance, inpaint_sound, level_db, noise_floor, sound_space


def read_task_clip(path: Path, model: LoadedModel) -> tuple[Tensor, int]:
    """(1, L) wave at the model's rate, padded at its end to the model's length, and the clip's own length."""
    space = sound_space(model)
    wave, rate = read_audio(path)
    clip = prepare_clip(wave, rate, space.rate, None, top_db=None, peak=PEAK)
    if isinstance(clip, str):
        raise UndiffuseError(f"{path}: the clip is {clip}")
    if len(clip) > space.length:
        raise UndiffuseError(f"{path} lasts {len(clip) / space.rate:.2f} s; this model takes clips of up to "
                             f"{space.length / space.rate:.3f} s: cut it first")
    return torch.from_numpy(np.pad(clip, (0, space.length - len(clip))))[None], len(clip)


def _write(model: LoadedModel, out: Path, stem: str, inputs: Tensor, results: Tensor, keep: int,
           params: dict[str, Any]) -> Path:
    """0000_<stem>.wav … per result (cut to ``keep`` samples) and compare.png: the input's spectrogram, then
    each result's."""
    space = model.space
    for i, wave in enumerate(results):
        write_wav(out / f"{i:04d}_{stem}.wav", wave[:keep], space.rate, {**params, "seed": params["seed"] + i})
    pictures = space.picture(space.encode(torch.cat([inputs, results])))
    return save_png(out / "compare.png", make_grid(pictures, nrow=len(pictures)), {**params, "columns": "input, then "
                    "each result"}, scale=2)


def denoise_file(model: LoadedModel, path: Path, req: SampleRequest, out: Path, sigma: float | None = None,
                 clean: Path | None = None) -> str:
    """Denoise a recording; the report: σ, the noise floor before and after and, with ``clean``, the
    log-spectral distance to the clean recording before and after."""
    space = sound_space(model)
    noisy, keep = read_task_clip(path, model)
    results, used = denoise_sound(model, noisy[0], req, sigma=sigma)
    before, after = level_db(noise_floor(space, noisy)), level_db(noise_floor(space, results))
    params = {"model": model.source, "task": "denoise", "input": str(path), "sampler": req.sampler,
              "steps": req.steps, "seed": req.seed, "sigma": round(used, 4), "noise_floor_db_before": round(before, 1),
              "noise_floor_db_after": round(after, 1)}
    how = "given" if sigma is not None else "the default residual level after subtracting the estimated noise floor"
    report = f"σ = {used:.3f} ({how}); noise floor {before:.1f} → {after:.1f} dB"
    if clean is not None:
        reference, _ = read_task_clip(clean, model)
        lsd_before = float(log_spectral_distance(space.magnitude(reference), space.magnitude(noisy)).mean())
        lsd_after = float(log_spectral_distance(space.magnitude(reference).expand(len(results), -1, -1),
                                                space.magnitude(results)).mean())
        params.update(lsd_db_before=round(lsd_before, 2), lsd_db_after=round(lsd_after, 2))
        report += f"; log-spectral distance to {clean.name} {lsd_before:.2f} → {lsd_after:.2f} dB"
    picture = _write(model, out, "denoised", noisy, results, keep, params)
    return f"denoised {path.name}: {report}: {picture}"


def parse_gap(text: str) -> tuple[float, float]:
    """"0.30:0.55" → (0.30, 0.55) seconds."""
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise UndiffuseError(f"--gap must be START:END in seconds, e.g. 0.30:0.55, got {text!r}") from None
    return start, end


def inpaint_file(model: LoadedModel, path: Path, gap: str, req: SampleRequest, out: Path,
                 resample: int = 0) -> str:
    """Fill a gap of a clip; the report: the log-spectral distance, over the gap, of the results and of silence to
    what the input holds there (when it holds anything)."""
    space = sound_space(model)
    start, end = parse_gap(gap)
    wave, keep = read_task_clip(path, model)
    if end > keep / space.rate:
        raise UndiffuseError(f"the gap {start}–{end} s ends after the clip ({keep / space.rate:.3f} s)")
    results = inpaint_sound(model, wave[0], start, end, req, resample=resample)
    params = {"model": model.source, "task": "inpaint", "input": str(path), "gap_s": [start, end],
              "sampler": req.sampler, "steps": req.steps, "seed": req.seed, "resample": resample}
    report = f"filled {start:.3f}–{end:.3f} s in {req.n} versions"
    i0, i1 = round(start * space.rate), round(end * space.rate)
    if float(wave[0, i0:i1].abs().max()) > 1e-3:  # the input has sound there: how near do the fills come to it?
        silence = wave.clone()
        silence[:, i0:i1] = 0
        ours = float(gap_distance(space, wave, results, start, end).mean())
        none = float(gap_distance(space, wave, silence, start, end).mean())
        params.update(gap_lsd_db=round(ours, 2), gap_lsd_db_silence=round(none, 2))
        report += f"; log-spectral distance to the input over the gap {ours:.2f} dB (silence: {none:.2f} dB)"
    picture = _write(model, out, "inpainted", wave, results, keep, params)
    return f"{report}: {picture}"
