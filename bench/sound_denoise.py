"""Denoising real speech: SI-SDR of a sound model's `denoise` against the noisy input and two classical baselines.

Real recordings (Tux Paint's 20 English spoken digits, two speakers no training set contains) get white Gaussian
noise at three signal-to-noise ratios; each method cleans each clip, and SI-SDR (Le Roux et al. 2019) against the
clean recording is averaged per level. The spoken-digit judge's accuracy on each output shows whether the words
survive. Methods:
- noisy: the input itself;
- wiener: scipy.signal.wiener (a local Wiener filter on the wave, window 5, as in scipy's docs);
- gating: noisereduce's stationary spectral gating (Sainburg et al. 2020), the usual classical denoiser;
- subtraction: our pipeline without the model: the noise floor (minimum statistics) over-subtracted twice, heard as a
  gain on the noisy STFT;
- model: `undiffuse denoise` (tasks.sound.denoise_sound): the same subtraction, then one denoiser evaluation
  x̂₀ = D(x̃, σ = 0.15) of the unconditional model, heard as a gain on the noisy STFT;
- SDEdit, griffin-lim: the first version of `denoise`: the noisy spectrogram noised to the estimated level and
  sampled back (20 steps), heard through Griffin-Lim started from the noisy phase.

    .venv/bin/pip install --no-deps noisereduce==3.0.3
    .venv/bin/python bench/sound_denoise.py --model spoken-digits --json bench/results/sound-denoise.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from undiffuse.data.tux_digits import load_tux_digits
from undiffuse.evaluation.classifier import load_classifier
from undiffuse.models import load_model
from undiffuse.sampling import SampleRequest
from undiffuse.tasks.run import _sample
from undiffuse.tasks.sound import denoise_sound, estimate_sound_sigma, sound_space, subtracted

LEVELS_DB = (0.0, 5.0, 10.0)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019, eq. 1), both zero-meaned."""
    r, e = reference - reference.mean(), estimate - estimate.mean()
    target = (e @ r) / max(r @ r, 1e-12) * r
    return float(10 * np.log10(max(target @ target, 1e-12) / max((e - target) @ (e - target), 1e-12)))


def add_noise(clean: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise at ``snr_db`` below the clip's power over its active part (|x| above 1 % of peak)."""
    active = clean[np.abs(clean) > 0.01 * np.abs(clean).max()]
    power = float(np.mean(active**2))
    noise = rng.standard_normal(len(clean)) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(clean + noise, -1, 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="spoken-digits")
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clips", type=int, default=0, help="only the first N recordings (0: all 20)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import noisereduce
    from scipy.signal import wiener

    model = load_model(a.model)
    space = sound_space(model)
    judge = load_classifier("spoken-digits-judge")
    tux = load_tux_digits(rate=space.rate, length=space.length)
    if a.clips:
        tux = replace(tux, waves=tux.waves[:a.clips], labels=tux.labels[:a.clips])
    clean = tux.waves.numpy()
    rng = np.random.default_rng(0)
    # the CLI's denoise: unconditional (the "no class" token: which digit is spoken is not given), no guidance
    req = SampleRequest(n=1, label=-1, sampler=a.sampler, steps=a.steps, grid=model.config.sample.grid,
                        guidance=1.0, precision="fp32")
    runs = {
        "noisy": lambda noisy, wave, i: noisy,
        "wiener": lambda noisy, wave, i: wiener(noisy, 5),
        "gating": lambda noisy, wave, i: noisereduce.reduce_noise(y=noisy, sr=space.rate, stationary=True),
        "subtraction": lambda noisy, wave, i: space.masked(subtracted(space, wave), wave)[0],
        "model": lambda noisy, wave, i: denoise_sound(model, wave[0], replace(req, seed=i))[0][0],
        "SDEdit, griffin-lim": lambda noisy, wave, i: space.decode(
            _sample(model, replace(req, seed=i), space.encode(wave), estimate_sound_sigma(space, wave)),
            phase_from=wave)[0],
    }
    methods = tuple(runs)
    rows, seconds = [], {m: 0.0 for m in methods}
    for snr in LEVELS_DB:
        outs: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        for i, ref in enumerate(clean):
            noisy = add_noise(ref, snr, rng)
            wave = torch.from_numpy(noisy)[None]
            for m, run in runs.items():
                t0 = time.perf_counter()
                outs[m].append(np.asarray(run(noisy, wave, i), dtype=np.float32))
                seconds[m] += time.perf_counter() - t0
        for m in methods:
            scores = [si_sdr(r, e) for r, e in zip(clean, outs[m], strict=True)]
            waves = torch.from_numpy(np.stack(outs[m]))
            acc = float((judge.predict(space.encode(waves)) == tux.labels).double().mean())
            rows.append({"snr_db": snr, "method": m, "si_sdr": float(np.mean(scores)), "judge_accuracy": acc})
            print(f"SNR {snr:4.1f} dB  {m:20s} SI-SDR {np.mean(scores):6.2f} dB  judge {100 * acc:5.1f} %", flush=True)
    clean_acc = float((judge.predict(space.encode(tux.waves)) == tux.labels).double().mean())
    print(f"clean recordings: judge {100 * clean_acc:.1f} %; seconds per clip: "
          + ", ".join(f"{m} {s / (len(clean) * len(LEVELS_DB)):.3f}" for m, s in seconds.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "sampler": a.sampler, "steps": a.steps,
                                            "clips": len(clean), "clean_judge_accuracy": clean_acc, "rows": rows,
                                            "seconds_per_clip": {m: s / (len(clean) * len(LEVELS_DB))
                                                                 for m, s in seconds.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
