"""The sound section of the explain page: a real clip, its spectrogram, the clip noised, a reverse process heard.

A sound model diffuses the clip's log-mel spectrogram x (:mod:`undiffuse.spaces.spectrogram`) exactly as an
image model diffuses pixels: x_σ = x + σ ε, every cell its own noise. Every state is heard by inverting the
spectrogram (mel inversion + fast Griffin-Lim), so the page carries a player for each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..data.audio import AudioData, write_wav
from ..data.spoken_digits import WORDS
from ..errors import UndiffuseError
from ..models import LoadedModel
from ..sampling import generate
from .page import Picture, Section, Sound
from .reverse import request

NOISE_SIGMAS = (0.1, 0.3, 1.0, 3.0)
REVERSE_SHOWN = 6


@dataclass
class SoundClip:
    """The clip the section starts from: a real recording where one is installed."""

    wave: Tensor   # (L,)
    label: int     # its class, -1 if none
    source: str    # said on the page


def real_clip(model: LoadedModel, seed: int = 0) -> SoundClip:
    """A real recorded digit (Tux Paint's, when installed and the model speaks digits), else a held-out clip of
    the model's data, else a clip the model makes."""
    space = model.space
    if model.class_names == WORDS:
        try:
            from ..data.tux_digits import load_tux_digits
            real: AudioData = load_tux_digits(rate=space.rate, length=space.length)
            i = seed % len(real)
            return SoundClip(real.waves[i], int(real.labels[i]), f"a real recording ({real.voices[i]}, "
                                                                  f"\"{real.class_names[int(real.labels[i])]}\")")
        except UndiffuseError:
            pass
    try:
        from ..data.sound import load_sound
        data = load_sound(model.config, "heldout" if model.config.data.name == "spoken_digits" else "train")
        return SoundClip(data.waves[0], int(data.labels[0]), f"a clip of {model.config.data.name} (not trained on)")
    except UndiffuseError:
        waves, labels = generate(model, request(model, seed=seed), progress=False)
        return SoundClip(waves[0], int(labels[0]) if labels is not None else -1, "a clip the model made")


def plot_wave_and_spectrogram(model: LoadedModel, wave: Tensor) -> Figure:
    """The waveform over time above its spectrogram x (mel bands over frames)."""
    space = model.space
    fig = Figure(figsize=(8, 4.4), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    seconds = np.arange(space.length) / space.rate
    top.plot(seconds, wave.numpy(), lw=0.6, color="#234")
    top.set_ylabel("amplitude")
    top.set_title("the wave: air pressure, sample by sample")
    x = space.encode(wave[None])[0, 0]
    bottom.imshow(x.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-1, vmax=1,
                  extent=(0, space.length / space.rate, 0, space.n_mels))
    bottom.set_ylabel("mel band")
    bottom.set_xlabel("seconds")
    bottom.set_title(f"its spectrogram x: {space.n_mels} mel bands × {space.frames} frames, −80 dB dark to 0 dB bright")
    return fig


def plot_strip(pictures: Tensor, titles: list[str]) -> Figure:
    """Spectrogram pictures (K, 3, M, T) in a row with a title each."""
    fig = Figure(figsize=(1.9 * len(titles), 2.3), dpi=100, layout="constrained")
    for ax, pic, title in zip(fig.subplots(1, len(titles)), pictures, titles, strict=True):
        ax.imshow(((pic.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1), aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig


def sound_section(model: LoadedModel, out, params: dict, numbers: dict, seed: int = 0) -> Section:
    """Section "Hearing it": write its figures and WAVs into ``out`` and return it."""
    if model.space.kind != "spectrogram":
        raise UndiffuseError(f"--sound needs a sound model (a spectrogram model such as spoken-digits); "
                             f"{model.source} runs in {model.space.kind} space")
    space = model.space
    clip = real_clip(model, seed)
    write_wav(out / "sound-clip.wav", clip.wave, space.rate, params)
    fig = plot_wave_and_spectrogram(model, clip.wave)
    fig.savefig(out / "sound-clip.png")

    x = space.encode(clip.wave[None])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g)
    noisy = torch.cat([x + s * noise for s in NOISE_SIGMAS])
    waves = space.decode(noisy)
    sounds = [Sound("sound-clip.wav", "The clip")]
    for s, w in zip(NOISE_SIGMAS, waves, strict=True):
        name = f"sound-noised-{s:g}.wav"
        write_wav(out / name, w, space.rate, {**params, "sigma": s})
        sounds.append(Sound(name, f"σ = {s:g}"))
    plot_strip(space.picture(torch.cat([x, noisy.clamp(-1, 1)])), ["the clip"] + [f"σ = {s:g}" for s in NOISE_SIGMAS]
               ).savefig(out / "sound-noised.png")

    label = clip.label if clip.label >= 0 and model.num_classes else None
    rec: list[tuple[float, Tensor]] = []
    req = request(model, seed=seed, label=label)
    final, _ = generate(model, replace(req, n=1), progress=False,
                        callback=lambda i, sigma, x_t, x0: rec.append((float(torch.as_tensor(sigma).flatten()[0]),
                                                                       x_t[0].clone())))
    shown = sorted(set(np.linspace(0, len(rec) - 1, REVERSE_SHOWN).round().astype(int).tolist()))
    states = torch.stack([rec[k][1] for k in shown])
    plot_strip(space.picture(states.clamp(-1, 1)), [f"step {k + 1}: σ = {rec[k][0]:.2g}" for k in shown]
               ).savefig(out / "sound-reverse.png")
    reverse_sounds = []
    for k, w in zip(shown, space.decode(states), strict=True):
        name = f"sound-reverse-{k + 1:02d}.wav"
        write_wav(out / name, w, space.rate, {**params, "step": k + 1, "sigma": rec[k][0]})
        reverse_sounds.append(Sound(name, f"step {k + 1}, σ = {rec[k][0]:.2g}"))
    write_wav(out / "sound-sample.wav", final[0], space.rate, {**params, "sampler": req.sampler, "steps": req.steps})
    reverse_sounds.append(Sound("sound-sample.wav", "the sample"))
    what = f"“{model.class_names[label]}”" if label is not None else "a clip"
    numbers["sound"] = {"model": model.source, "clip": clip.source, "noise_sigmas": list(NOISE_SIGMAS),
                        "reverse_steps": len(rec), "rate": space.rate, "seconds": space.length / space.rate}
    return Section("sound", "Hearing it: diffusion on sound", [
        f"Sound is a wave: {space.rate:,} numbers per second, each the air pressure at an instant. The model "
        f"<code>{model.source}</code> does not diffuse those numbers but the clip's spectrogram: the loudness of "
        f"{space.n_mels} frequency bands (on the mel scale, closer together where the ear tells pitches apart) in "
        f"{space.frames} frames of {1000 * space.hop / space.rate:.0f} ms, in decibels scaled to [−1, 1]. That "
        "spectrogram is a one-channel image, and the forward and reverse processes run on it exactly as on pixels. "
        "To be heard, a spectrogram is turned back into a wave: the bands are spread back over frequencies and "
        "the phase, which the spectrogram does not keep, is found by Griffin-Lim's alternating projections.",
        f"Below: {clip.source} as a wave and as its spectrogram; then the same spectrogram with Gaussian noise of "
        "growing σ added to every cell (the forward process), each played back; then a reverse process of the "
        f"model, from pure noise to {what}: the state x<sub>t</sub> at a few of its {len(rec)} steps, each heard."],
        [Picture("sound-clip.png", f"{clip.source}: the wave and its spectrogram."),
         *sounds,
         Picture("sound-noised.png", "The spectrogram with noise of σ added to every cell."),
         Picture("sound-reverse.png", "The reverse process: the state at a few of its steps."),
         *reverse_sounds], level=4)
