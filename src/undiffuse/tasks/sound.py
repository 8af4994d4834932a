"""Sound tasks on a spectrogram model: denoise a noisy recording, fill a gap in a clip.

Both run in the model's spectrogram space (:class:`~undiffuse.spaces.spectrogram.SpectrogramSpace`) and hear
the result through its inverse, starting Griffin-Lim from the input's own phase.

Denoise. Noise added to a wave is not Gaussian in log-mel x: it lifts every quiet band to the noise's level, an
offset no Gaussian step undoes, so the noisy x is not a sampler state as a noisy image is. The noise's mel spectrum
is read as the per-band low percentile over frames (minimum statistics, Martin 2001: speech leaves every band quiet
for part of a clip) and subtracted twice over (spectral over-subtraction, Berouti et al. 1979), which leaves a rough
clean x̃ with residual, speckled errors; the model removes those as noise of level σ: x̂₀ = D(x̃, σ), the posterior
mean of a clean spectrogram (Tweedie). The result is heard as a gain on the recording's own STFT
(:meth:`~undiffuse.spaces.spectrogram.SpectrogramSpace.masked`): its phase is kept, which Griffin-Lim would have to
guess again (bench/README.md, "Denoising real speech": SI-SDR against the noisy input, Wiener filtering and spectral
gating).

Inpaint. The frames whose analysis window touches the gap are unknown; the rest of x is written into every x̂₀
(:class:`~undiffuse.tasks.consistency.InpaintDenoiser`); the wave outside the gap is the input's, exactly, with
a short cross-fade at the gap's edges.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UndiffuseError
from ..models import LoadedModel
from ..sampling import SampleRequest, cond_for, guided_denoiser
from ..spaces.spectrogram import SpectrogramSpace, log_spectral_distance
from .consistency import InpaintDenoiser
from .run import Callback, _sample

NOISE_PERCENTILE = 0.2  # the quiet part of each band that the noise floor is read from
OVER_SUBTRACTION = 2.0  # power subtracted per band, in noise floors (Berouti et al. 1979)
RESIDUAL_SIGMA = 0.15   # the level of what subtraction leaves, in x: best of 0.1-0.8 on bench/sound_denoise.py
FADE_S = 0.010          # cross-fade at each edge of a filled gap


def sound_space(model: LoadedModel) -> SpectrogramSpace:
    if model.space.kind != "spectrogram":
        raise UndiffuseError(f"{model.source} is not a sound model (it runs in {model.space.kind} space): sound "
                             "tasks need a spectrogram model such as spoken-digits")
    return model.space


def check_wave(space: SpectrogramSpace, wave: Tensor, what: str = "clip") -> Tensor:
    """(L,) or (1, L) float → (1, L), refusing other lengths, NaN and silence."""
    if wave.ndim == 1 or (wave.ndim == 2 and wave.shape[0] == 1):
        wave = wave.reshape(1, -1).float()
    if wave.ndim != 2 or tuple(wave.shape) != (1, space.length):
        raise UndiffuseError(f"the {what} must be {space.length} samples at {space.rate} Hz, got {tuple(wave.shape)}")
    if not bool(torch.isfinite(wave).all()):
        raise UndiffuseError(f"the {what} contains NaN or inf")
    if float(wave.abs().max()) == 0:
        raise UndiffuseError(f"the {what} is silent")
    return wave


def noise_floor(space: SpectrogramSpace, wave: Tensor, q: float = NOISE_PERCENTILE) -> Tensor:
    """(N, L) → (N, n_mels, 1): per band, the ``q`` quantile of the mel amplitude over frames."""
    return torch.quantile(space.mel(wave), q, dim=-1, keepdim=True)


def level_db(mel: Tensor) -> float:
    """A mel spectrum's level in dB (of the mean power over bands and frames, a full-scale sine in one band at 0)."""
    return float(10 * torch.log10(mel.pow(2).mean().clamp(min=1e-20)))


def estimate_sound_sigma(space: SpectrogramSpace, wave: Tensor) -> float:
    """How far the noisy clip's x lies from a clean one: RMS(x − x̃), x̃ = x of the mel spectrum minus the noise
    floor (power spectral subtraction)."""
    return float((space.encode(wave) - subtracted(space, wave, over=1.0)).pow(2).mean().sqrt())


def subtracted(space: SpectrogramSpace, wave: Tensor, over: float = OVER_SUBTRACTION) -> Tensor:
    """(N, L) → (N, 1, M, T): x of the mel spectrum with ``over`` noise floors of power subtracted per band."""
    mel = space.mel(wave)
    return space.to_x((mel.pow(2) - over * noise_floor(space, wave).pow(2)).clamp(min=0).sqrt())


@torch.no_grad()
def denoise_sound(model: LoadedModel, wave: Tensor, req: SampleRequest, sigma: float | None = None,
                  callback: Callback | None = None) -> tuple[Tensor, float]:
    """A noisy recording (L,) → (n, L) cleaned versions and the σ used (RESIDUAL_SIGMA when None): the
    over-subtracted x̃ denoised in one evaluation, x̂₀ = D(x̃, σ), heard through the recording's STFT. The
    request's class (label -1: none), guidance and precision apply; the estimate is deterministic, so the n
    versions are equal."""
    space = sound_space(model)
    wave = check_wave(space, wave, "noisy clip")
    sigma = RESIDUAL_SIGMA if sigma is None else float(sigma)
    if not sigma > 0:
        raise UndiffuseError(f"the noise level must be positive, got {sigma}")
    denoiser, labels, text = guided_denoiser(model, req)
    x = subtracted(space, wave).expand(req.n, -1, -1, -1)
    s = torch.full((req.n,), sigma)
    x0 = denoiser(x, s, cond_for(labels, text, range(req.n)))
    if callback is not None:
        callback(0, s, x, x0)
    return space.masked(x0, wave), sigma


def gap_frames(space: SpectrogramSpace, start_s: float, end_s: float) -> Tensor:
    """(frames,) bool: the frames whose window (n_fft wide, centred on t·hop) overlaps [start_s, end_s)."""
    length_s = space.length / space.rate
    if not 0 <= start_s < end_s <= length_s:
        raise UndiffuseError(f"the gap must lie inside the clip, 0 ≤ start < end ≤ {length_s:.3f} s, got "
                             f"{start_s}–{end_s} s")
    centre = torch.arange(space.frames) * space.hop
    half = space.n_fft // 2
    return (centre + half > start_s * space.rate) & (centre - half < end_s * space.rate)


def splice(original: Tensor, filled: Tensor, start: int, end: int, fade: int) -> Tensor:
    """``original`` (1, L) outside [start, end), ``filled`` (n, L) inside, with linear cross-fades of ``fade``
    samples just inside each edge."""
    weight = torch.zeros(original.shape[-1])
    weight[start:end] = 1.0
    fade = min(fade, (end - start) // 2)
    if fade:
        ramp = torch.linspace(0, 1, fade + 2)[1:-1]
        weight[start:start + fade], weight[end - fade:end] = ramp, ramp.flip(0)
    return original * (1 - weight) + filled * weight


@torch.no_grad()
def inpaint_sound(model: LoadedModel, wave: Tensor, start_s: float, end_s: float, req: SampleRequest,
                  resample: int = 0, callback: Callback | None = None) -> Tensor:
    """Fill [start_s, end_s) of a clip (L,): (n, L) versions, identical to the input outside the gap."""
    space = sound_space(model)
    wave = check_wave(space, wave)
    unknown = gap_frames(space, start_s, end_s)
    known = (~unknown).float().reshape(1, 1, 1, -1).expand(1, *space.shape)
    g = torch.Generator().manual_seed(req.seed + 1_000_003)
    out = _sample(model, req, None, None, lambda d: InpaintDenoiser(d, space.encode(wave), known, resample, g),
                  callback)
    start, end = round(start_s * space.rate), round(end_s * space.rate)
    gapped = wave.clone()
    gapped[:, start:end] = 0
    filled = space.decode(out, phase_from=gapped.expand(req.n, -1))
    return splice(wave, filled, start, end, round(FADE_S * space.rate))


def gap_distance(space: SpectrogramSpace, reference: Tensor, waves: Tensor, start_s: float, end_s: float) -> Tensor:
    """Per clip, the log-spectral distance (dB) to ``reference`` (1, L) over the frames of the gap."""
    frames = gap_frames(space, start_s, end_s)
    ref = space.magnitude(reference)[..., frames]
    return log_spectral_distance(ref.expand(len(waves), -1, -1), space.magnitude(waves)[..., frames])


__all__ = ["denoise_sound", "estimate_sound_sigma", "gap_distance", "gap_frames", "inpaint_sound", "level_db",
           "noise_floor", "splice"]

