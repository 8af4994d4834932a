"""A sound model end to end: a folder of clips trains a tiny spectrogram U-Net, `sample` writes WAVs with their
parameters, a WAV of all of them and a spectrogram grid; the config refuses sound in the wrong space."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from undiffuse.cli import app
from undiffuse.config import load_config
from undiffuse.data.audio import read_wav_params
from undiffuse.data.sound import load_sound_images
from undiffuse.errors import UndiffuseError

from conftest import LENGTH, RATE, ROOT, sound_config, tone_folder

pytestmark = pytest.mark.usefixtures("one_thread")

def test_spectrogram_images_of_a_folder(tmp_path):
    cfg = load_config(sound_config(tmp_path, tone_folder(tmp_path / "clips")))
    images = load_sound_images(cfg)
    assert images.images.shape == (12, 1, 32, 32) and images.class_names == ["high", "low"]
    x = images.images.float()
    band = x.mean(dim=(0, 1, 3))  # mean level per mel band, over the clips of each class
    high, low = x[images.labels == 0].mean(dim=(0, 1, 3)), x[images.labels == 1].mean(dim=(0, 1, 3))
    assert band.shape == (32,) and high.argmax() > low.argmax() + 5  # the high tones sit in higher bands


def test_training_preview_is_a_picture_and_a_sound(tone_run):
    preview = tone_run / "samples" / "step_00000006.png"
    assert Image.open(preview).mode == "RGB"
    wave, rate = sf.read(preview.with_suffix(".wav"))
    assert rate == RATE and len(wave) == 16 * LENGTH + 15 * round(0.25 * RATE)  # 2 classes × 8, in a row


def test_sample_writes_sounds(tone_run, tmp_path):
    run, runner = tone_run, CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["sample", str(run), "--class", "low", "--n", "3", "--seed", "5", "--out", str(out),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "sampled 3 sounds" in result.output
    wavs = sorted(out.glob("0*.wav"))
    assert [w.name for w in wavs] == ["0000_seed5_low.wav", "0001_seed6_low.wav", "0002_seed7_low.wav"]
    wave, rate = sf.read(wavs[1])
    assert rate == RATE and wave.shape == (LENGTH,) and np.isfinite(wave).all()
    params = read_wav_params(wavs[1])
    assert params["seed"] == 6 and params["class"] == "low" and params["sampler"] == "dpmpp_2m"
    assert params["steps"] == 3 and params["guidance"] == 2.0
    every, _ = sf.read(out / "all.wav")
    assert len(every) == 3 * LENGTH + 2 * round(0.25 * RATE)  # the clips in a row, a quarter second apart
    assert read_wav_params(out / "all.wav")["clips"] == 3
    grid = Image.open(out / "spectrograms.png")
    assert grid.mode == "RGB" and grid.width >= 2 * 2 * 32 and "Seeds: 5-7" in grid.info["parameters"]


def test_evaluate_hears_a_sound_model(tone_run, tmp_path):
    """evaluate scores sounds with a judge's features on the spectrograms of the decoded waves."""
    import json

    from safetensors.torch import save_file

    from undiffuse.evaluation.classifier import ImageClassifier
    from undiffuse.evaluation.evaluate import EvalSettings, evaluate
    from undiffuse.models import load_model

    args = {"in_channels": 1, "num_classes": 2, "image_size": 32, "channels": [8, 16], "feature_dim": 16}
    torch.manual_seed(0)
    judge = tmp_path / "judge"
    judge.mkdir()
    save_file(ImageClassifier(**args).state_dict(), judge / "model.safetensors")
    (judge / "config.json").write_text(json.dumps({"args": args}))
    model = load_model(tone_run)
    ev = evaluate(model, EvalSettings(samplers=["ddim"], steps=[2], n=6, k=2, classifier=str(judge)), progress=False)
    assert ev.features == "classifier" and ev.rows[0].nfe == 2 * 2 and ev.rows[0].scores.fid > 0   # guided
    assert ev.rows[0].accuracy is not None and ev.floor_accuracy is not None
    with pytest.raises(UndiffuseError, match="makes sounds"):
        evaluate(model, EvalSettings(n=6, k=2, features="inception"), progress=False)


def test_sound_needs_the_spectrogram_space(tmp_path):
    config = sound_config(tmp_path, tmp_path)
    text = config.read_text()
    for old, new, says in ((' kind = "spectrogram"', ' kind = "pixels"', "space.kind = 'spectrogram'"),
                           ("image_size = 32", "image_size = 64", "data.image_size = space.n_mels"),
                           ("channels = 1", "channels = 1\nflip = true", "played backwards")):
        config.write_text(text.replace(old.strip(), new.strip(), 1))
        with pytest.raises(UndiffuseError, match=says):
            load_config(config)


def test_picture_puts_low_bands_at_the_bottom():
    from undiffuse.spaces.spectrogram import spectrogram_picture
    x = -torch.ones(1, 1, 8, 4)
    x[:, :, 0] = 1.0  # the lowest band loud
    rgb = spectrogram_picture(x)
    assert rgb.shape == (1, 3, 8, 4)
    assert rgb[0, :, -1].mean() > rgb[0, :, 0].mean() + 1  # bright at the bottom row, dark at the top


def noisy_tone(seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH) / RATE
    clean = 0.5 * np.sin(2 * np.pi * 300 * t) * (np.abs(t - 0.25) < 0.12)
    return (clean + noise * rng.standard_normal(LENGTH)).astype(np.float32), clean.astype(np.float32)


def test_noise_level_estimate_rises_with_the_noise():
    from undiffuse.spaces.spectrogram import SpectrogramSpace
    from undiffuse.tasks.sound import estimate_sound_sigma, level_db, noise_floor

    space = SpectrogramSpace(rate=RATE, length=LENGTH, n_fft=256, hop=64, n_mels=32)
    sigmas = [estimate_sound_sigma(space, torch.from_numpy(noisy_tone(0, a)[0])[None]) for a in (0.003, 0.03, 0.1)]
    assert sigmas[0] < sigmas[1] < sigmas[2]
    white = torch.from_numpy(np.random.default_rng(1).standard_normal((1, LENGTH)).astype(np.float32)) * 0.1
    louder = level_db(noise_floor(space, white * 10)) - level_db(noise_floor(space, white))
    assert abs(louder - 20) < 0.5  # ×10 in amplitude is +20 dB


def test_gap_frames_and_splice():
    from undiffuse.spaces.spectrogram import SpectrogramSpace
    from undiffuse.tasks.sound import gap_frames, splice

    space = SpectrogramSpace(rate=RATE, length=LENGTH, n_fft=256, hop=64, n_mels=32)
    frames = gap_frames(space, 0.2, 0.3)  # samples 800-1200; windows of ±128 around t·64
    assert frames.nonzero().flatten().tolist() == list(range(11, 21))
    with pytest.raises(UndiffuseError, match="inside the clip"):
        gap_frames(space, 0.3, 0.2)
    a, b = torch.ones(1, LENGTH), torch.full((2, LENGTH), 3.0)
    out = splice(a, b, 800, 1200, 40)
    assert out.shape == (2, LENGTH) and (out[:, :800] == 1).all() and (out[:, 1200:] == 1).all()
    assert (out[:, 840:1160] == 3).all() and (out[:, 800:840].diff(dim=-1) > 0).all()


def test_sound_denoise_and_inpaint_from_files(tone_run, tmp_path):
    noisy, clean = noisy_tone(2, 0.05)
    sf.write(tmp_path / "noisy.wav", noisy, RATE)
    sf.write(tmp_path / "clean.wav", clean, RATE)
    runner = CliRunner()
    out = tmp_path / "den"
    result = runner.invoke(app, ["denoise", str(tmp_path / "noisy.wav"), "--model", str(tone_run), "--steps", "3",
                                 "--clean", str(tmp_path / "clean.wav"), "--out", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "estimated noise floor" in result.output and "log-spectral distance" in result.output
    params = read_wav_params(out / "0000_denoised.wav")
    assert params["task"] == "denoise" and params["sigma"] > 0 and "lsd_db_after" in params
    assert Image.open(out / "compare.png").width > 2 * 32
    out = tmp_path / "inp"
    sf.write(tmp_path / "clip.wav", clean[:1600], RATE)  # 0.4 s: shorter than the model's 0.512 s
    result = runner.invoke(app, ["inpaint", str(tmp_path / "clip.wav"), "--model", str(tone_run), "--gap", "0.2:0.3",
                                 "--class", "low", "--n", "2", "--steps", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "filled 0.200–0.300 s in 2 versions" in result.output and "(silence:" in result.output
    for i in range(2):
        wave, rate = sf.read(out / f"{i:04d}_inpainted.wav", dtype="float32")
        assert rate == RATE and len(wave) == 1600  # cut back to the clip's own length
        ref = clean[:1600] * (0.95 / np.abs(clean).max())  # the task peak-normalises as training did
        assert np.allclose(wave[:800], ref[:800], atol=1e-4) and np.allclose(wave[1200:], ref[1200:], atol=1e-4)
    result = runner.invoke(app, ["inpaint", str(tmp_path / "clip.wav"), "--model", str(tone_run), "--out", str(out)])
    assert result.exit_code != 0 and "--gap" in str(result.exception)
    result = runner.invoke(app, ["inpaint", str(tmp_path / "clip.wav"), "--model", str(tone_run), "--gap", "0.3:0.5",
                                 "--out", str(out)])
    assert result.exit_code != 0 and "ends after the clip" in str(result.exception)


def test_guidance_without_label_dropout_is_refused(tmp_path):
    """A conditional recipe must train its 'no class' token if it samples with guidance (a run without it draws
    noise at guidance 0 and worse images at every guidance above 1)."""
    config = sound_config(tmp_path, tmp_path)
    config.write_text(config.read_text().replace("warmup = 2", "warmup = 2\nlabel_dropout = 0.0"))
    with pytest.raises(UndiffuseError, match="'no class' token untrained"):
        load_config(config)
    config.write_text(config.read_text().replace("guidance = 2.0", "guidance = 1.0"))
    assert load_config(config).train.label_dropout == 0.0


def test_spoken_digits_are_measured_against_held_out_voices(monkeypatch):
    """evaluate's real sets for spoken digits: the comparison set from the held-out voices, the floor set from the
    training voices, as many of each (at most the held-out clips)."""
    from undiffuse.data import sound
    from undiffuse.data.images import ImageData
    from undiffuse.evaluation.reference import reference_set

    names = [str(d) for d in range(10)]
    sets = {"heldout": ImageData(torch.full((12, 1, 8, 8), 10, dtype=torch.uint8), torch.arange(12) % 10, names),
            "train": ImageData(torch.full((40, 1, 8, 8), 200, dtype=torch.uint8), torch.arange(40) % 10, names)}
    monkeypatch.setattr(sound, "load_sound_images", lambda cfg, split="train": sets[split])
    cfg = load_config(ROOT / "configs" / "spoken-digits.toml")
    ref = reference_set(cfg, 30)
    assert len(ref.a) == len(ref.b) == 12 and len(ref.labels_a) == 12      # capped by the held-out clips
    assert bool((ref.a < -0.5).all()) and bool((ref.b > 0.5).all())       # a: held-out voices, b: training voices
    assert "held-out voices" in ref.source
    assert reference_set(cfg, 5).a.shape == (5, 1, 8, 8)


def test_mask_keeps_the_recording_and_subtraction_removes_noise():
    """The gain of a clip's own spectrogram on its STFT gives the clip back; over-subtracting the estimated noise
    floor, heard through the same gain, raises the SI-SDR of a noisy tone."""
    from undiffuse.spaces.spectrogram import SpectrogramSpace
    from undiffuse.tasks.sound import subtracted

    def si_sdr(ref, est):
        target = (est @ ref) / (ref @ ref) * ref
        return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))

    space = SpectrogramSpace(rate=RATE, length=LENGTH, n_fft=256, hop=64, n_mels=32)
    noisy, clean = noisy_tone(3, 0.05)
    c = torch.from_numpy(clean)[None]
    back = space.masked(space.encode(c), c)[0].numpy()
    assert si_sdr(clean, back) > 30
    w = torch.from_numpy(noisy)[None]
    cleaned = space.masked(subtracted(space, w), w)[0].numpy()
    assert si_sdr(clean, cleaned) > si_sdr(clean, noisy) + 3
