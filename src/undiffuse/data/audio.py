"""Sound clips in and out: read (WAV/FLAC/OGG via libsndfile), mono, resample, trim, fixed length; WAV with parameters.

Every audio source turns its clips into the same (N, L) float32 waves in [-1, 1] with one recipe,
:func:`prepare_clip`: mix down to mono, resample (polyphase, ``scipy.signal.resample_poly``), refuse a
silent clip, trim leading and trailing silence by frame energy, scale the peak to ``peak`` and centre
the sound in ``length`` samples (zero padding, or a centred crop when longer).

A WAV written here is 16-bit PCM whose parameters (model, seed, rate, …) travel as JSON in the RIFF
``LIST/INFO`` chunk's ``ICMT`` (comment) field, as a PNG carries them in a text chunk: every player
ignores it, :func:`read_wav_params` reads it back.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write
from ..errors import UndiffuseError

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"}  # what libsndfile ≥ 1.1 decodes
SILENT_PEAK = 1e-3   # a clip whose peak stays below −60 dBFS is silence (or a gain error), not speech
TRIM_TOP_DB = 40.0   # trimming keeps what lies within 40 dB of the loudest 20-ms frame (librosa's effects.trim uses 60)
PEAK = 0.95          # every clip's peak after preparation: loudness is not what a digit model should learn
FRAME_S, HOP_S = 0.020, 0.010


@dataclass
class AudioData:
    """Clips as (N, L) float32 waves in [-1, 1] at ``rate`` Hz, with labels (-1: none) and per-clip voice / source."""

    waves: Tensor
    labels: Tensor
    class_names: list[str]
    rate: int
    voices: list[str] = field(default_factory=list)   # who speaks each clip ("espeak:en-us+m3", "tuxpaint:en_GB")
    sources: list[str] = field(default_factory=list)  # how each clip was made or where it came from
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: str = ""

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def length(self) -> int:
        return int(self.waves.shape[-1])


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A file's samples as float32 (frames, channels) and its rate; a one-line UndiffuseError if unreadable."""
    import soundfile as sf

    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise UndiffuseError(f"cannot read {path}: {str(e).splitlines()[0][:80]}") from None
    return wave, int(rate)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) → (frames,): the mean of the channels."""
    return wave.mean(axis=1, dtype=np.float32) if wave.ndim == 2 else wave.astype(np.float32, copy=False)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio rate_out/rate_in (Kaiser-windowed FIR, scipy's default)."""
    if rate_in == rate_out:
        return wave.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(wave, rate_out // g, rate_in // g).astype(np.float32)


def trim_silence(wave: np.ndarray, rate: int, top_db: float = TRIM_TOP_DB) -> np.ndarray:
    """Drop the leading and trailing frames whose RMS is more than ``top_db`` below the loudest frame."""
    frame, hop = max(1, round(FRAME_S * rate)), max(1, round(HOP_S * rate))
    if len(wave) <= frame:
        return wave
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]  # (T, frame)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
    loud = np.flatnonzero(db > db.max() - top_db)
    return wave[loud[0] * hop: loud[-1] * hop + frame]


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Centre the clip in ``length`` samples: zero padding on both sides, or the centre part when longer."""
    n = len(wave)
    if n >= length:
        start = (n - length) // 2
        return wave[start:start + length]
    left = (length - n) // 2
    return np.pad(wave, (left, length - n - left))


def prepare_clip(wave: np.ndarray, rate_in: int, rate: int, length: int | None, *, top_db: float | None = TRIM_TOP_DB,
                 peak: float | None = PEAK) -> np.ndarray | str:
    """mono → resample → trim → peak → fixed length: (length,) float32, or "empty" / "silent" (the reason to skip)."""
    wave = to_mono(wave)
    if wave.size == 0:
        return "empty"
    if not np.isfinite(wave).all():
        return "not finite"
    if np.abs(wave).max() < SILENT_PEAK:
        return "silent"
    wave = resample(wave, rate_in, rate)
    if top_db is not None:
        wave = trim_silence(wave, rate, top_db)
    if peak is not None:
        wave = wave * (peak / max(np.abs(wave).max(), 1e-12))
    wave = np.clip(wave, -1.0, 1.0)
    return (fit_length(wave, length) if length else wave).astype(np.float32)


def load_clip(path: str | os.PathLike, rate: int, length: int | None, **kwargs: Any) -> np.ndarray | str:
    """One file through :func:`prepare_clip`, or the reason it is skipped ("empty", "silent", "unreadable: …")."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            return "empty"
    except OSError as e:
        return f"unreadable: {e.strerror}"
    try:
        wave, rate_in = read_audio(p)
    except UndiffuseError as e:
        return "unreadable: " + str(e).split(": ", 1)[-1]
    return prepare_clip(wave, rate_in, rate, length, **kwargs)


def as_numpy(wave: Tensor | np.ndarray) -> np.ndarray:
    a = wave.detach().cpu().float().numpy() if isinstance(wave, Tensor) else np.asarray(wave, np.float32)
    if a.ndim != 1:
        raise UndiffuseError(f"a clip must be one channel of samples (L,), got shape {tuple(a.shape)}")
    return a


def concat_clips(waves: Tensor | np.ndarray | list, rate: int, gap: float = 0.25) -> np.ndarray:
    """Clips (N, L) or a list of (L_i,) joined into one wave with ``gap`` seconds of silence between them."""
    silence = np.zeros(round(gap * rate), np.float32)
    parts: list[np.ndarray] = []
    for i, w in enumerate(waves):
        parts += ([silence] if i else []) + [as_numpy(w)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return tag + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")  # RIFF pads to even


def wav_bytes(wave: Tensor | np.ndarray, rate: int, params: dict[str, Any] | None = None) -> bytes:
    """A mono 16-bit PCM WAV; ``params`` as JSON in LIST/INFO/ICMT (and ISFT = "undiffuse")."""
    samples = as_numpy(wave)
    if not np.isfinite(samples).all():
        raise UndiffuseError("cannot write a WAV of a clip with NaN or infinite samples")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, rate, bytes/s, block align, bits
    info = _chunk(b"ISFT", b"undiffuse\0")
    if params:
        info += _chunk(b"ICMT", json.dumps(params, sort_keys=True).encode() + b"\0")
    body = b"WAVE" + _chunk(b"fmt ", fmt) + _chunk(b"LIST", b"INFO" + info) + _chunk(b"data", pcm)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_wav(path: str | os.PathLike, wave: Tensor | np.ndarray, rate: int,
              params: dict[str, Any] | None = None) -> Path:
    """Write one clip (L,) as a 16-bit WAV carrying ``params`` (atomically: a crash leaves no half file)."""
    path = Path(path)
    data = wav_bytes(wave, rate, params)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def write_wav_sequence(path: str | os.PathLike, waves: Tensor | np.ndarray | list, rate: int,
                       params: dict[str, Any] | None = None, gap: float = 0.25) -> Path:
    """Several clips in one WAV, ``gap`` seconds apart (a grid of sounds, as a PNG grid is of images)."""
    return write_wav(path, concat_clips(waves, rate, gap), rate, {**(params or {}), "clips": len(waves), "gap_s": gap})


def read_wav_params(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON parameters in a WAV's LIST/INFO/ICMT chunk; {} when it has none."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UndiffuseError(f"cannot read {path}: {e.strerror}") from None
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise UndiffuseError(f"{path} is not a WAV file")
    pos = 12
    while pos + 8 <= len(raw):
        tag, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        payload = raw[pos + 8:pos + 8 + size]
        if tag == b"LIST" and payload[:4] == b"INFO":
            sub = 4
            while sub + 8 <= len(payload):
                sub_tag, sub_size = payload[sub:sub + 4], struct.unpack("<I", payload[sub + 4:sub + 8])[0]
                if sub_tag == b"ICMT":
                    text = payload[sub + 8:sub + 8 + sub_size].rstrip(b"\0").decode("utf-8", "replace")
                    try:
                        return json.loads(text)
                    except json.JSONDecodeError:
                        return {"comment": text}
                sub += 8 + sub_size + sub_size % 2
        pos += 8 + size + size % 2
    return {}


def stack_waves(clips: list[np.ndarray]) -> Tensor:
    """A list of equal-length clips as one (N, L) float32 tensor."""
    return torch.from_numpy(np.stack(clips)) if clips else torch.zeros(0, 0)
