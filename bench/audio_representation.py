"""How much of a real clip survives the spectrogram space? encode → decode of spoken digits, measured.

    OMP_NUM_THREADS=1 .venv/bin/python bench/audio_representation.py --json bench/results/audio-representation.json \
        --figure bench/results/audio-representation.png

Clips: Tux Paint's 20 real recordings (two speakers, never synthesised) and held-out synthetic voices
(espeak-ng voices that no training clip uses). For each, against the original's STFT magnitude |X|:
- spectral convergence SC = ‖|X| − |Y|‖ / ‖|X|‖ (lower is better), its magnitude SNR = −20 log10 SC,
  and the log-spectral distance LSD (dB, floored 80 dB below each clip's peak);
- x-MAE: the mean |encode(decode(x)) − x| in the space's own units (2 = the 80 dB range): how consistent
  the sound is with the spectrogram a model would generate.
Rows: "mel ceiling" is the NNLS linear magnitude from the mel spectrogram alone, before any phase (what
64 bands can hold of 257 bins); "oracle GL" runs Griffin-Lim on the true |X| (the phase loss alone);
then Griffin-Lim from the mel spectrogram for several iteration counts, classic (α = 0) and fast (α = 0.99,
Perraudin et al. 2013), with seconds per clip on one thread; the pseudo-inverse without NNLS; and, where
librosa imports (it is no dependency: ``PYTHONPATH=<a folder with librosa>``), librosa's own pipeline as a peer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from undiffuse.data.audio import write_wav_sequence
from undiffuse.data.spoken_digits import load_spoken_digits
from undiffuse.data.tux_digits import load_tux_digits
from undiffuse.spaces.spectrogram import SpectrogramSpace, log_spectral_distance, spectral_convergence


def scores(space: SpectrogramSpace, waves: torch.Tensor, mag: torch.Tensor) -> dict:
    ref = space.magnitude(waves)
    sc = spectral_convergence(ref, mag)
    return {"sc": float(sc.mean()), "sc_max": float(sc.max()), "snr_db": float((-20 * torch.log10(sc)).mean()),
            "lsd_db": float(log_spectral_distance(ref, mag).mean())}


def round_trip(space: SpectrogramSpace, waves: torch.Tensor) -> tuple[dict, torch.Tensor]:
    x = space.encode(waves)
    t0 = time.perf_counter()
    y = space.decode(x)
    seconds = time.perf_counter() - t0
    res = scores(space, waves, space.magnitude(y))
    res |= {"x_mae": float((space.encode(y) - x).abs().mean()), "seconds_per_clip": seconds / len(waves)}
    return res, y


def librosa_round_trip(space: SpectrogramSpace, waves: torch.Tensor) -> dict | None:
    """The same decode with librosa (L-BFGS-B NNLS, its fast Griffin-Lim), when it imports: a reference."""
    try:
        import librosa
        import numpy as np
    except ImportError:
        return None
    filters = librosa.filters.mel(sr=space.rate, n_fft=space.n_fft, n_mels=space.n_mels, htk=False, norm=None)
    x = space.encode(waves)
    t0 = time.perf_counter()
    lin = librosa.feature.inverse.mel_to_stft(space.to_mel(x).numpy() / space._scale, sr=space.rate, n_fft=space.n_fft,
                                              power=1.0, htk=False, norm=None)
    lin = np.concatenate([lin, np.zeros_like(lin[..., :1])], -1)  # librosa's STFT keeps the frame we drop
    y = librosa.griffinlim(lin, n_iter=64, hop_length=space.hop, n_fft=space.n_fft, center=True, length=space.length,
                           pad_mode="constant", momentum=0.99, random_state=0)
    seconds = time.perf_counter() - t0
    y = torch.from_numpy(y).float()
    return scores(space, waves, space.magnitude(y)) | {
        "x_mae": float((space.encode(y) - x).abs().mean()), "seconds_per_clip": seconds / len(waves),
        "mel_filters_max_abs_diff": float(np.abs(filters - space.filters.numpy()).max())}


def measure(waves: torch.Tensor, iters: list[int]) -> dict:
    base = SpectrogramSpace()
    x = base.encode(waves)
    rows = {"mel ceiling (NNLS, no phase loss)": scores(base, waves, base.mel_to_linear(base.to_mel(x))),
            "mel ceiling (pseudo-inverse)": scores(base, waves, SpectrogramSpace(nnls_iters=0).mel_to_linear(
                base.to_mel(x)))}
    t0 = time.perf_counter()
    oracle = base.griffin_lim(base.magnitude(waves))
    rows["oracle GL 64 fast (true |X|)"] = scores(base, waves, base.magnitude(oracle)) | {
        "seconds_per_clip": (time.perf_counter() - t0) / len(waves)}
    for alpha in (0.0, 0.99):
        for n in iters:
            rows[f"GL {n:>3} α={alpha}"] = round_trip(SpectrogramSpace(gl_iters=n, momentum=alpha), waves)[0]
    rows["GL  64 α=0.99 pseudo-inverse"] = round_trip(SpectrogramSpace(nnls_iters=0), waves)[0]
    rows["GL  64 α=0.99 NNLS 50 it."] = round_trip(SpectrogramSpace(nnls_iters=50), waves)[0]
    peer = librosa_round_trip(base, waves)
    if peer is not None:
        rows["librosa 0.11 NNLS + GL 64 α=0.99"] = peer
    return {"n": len(waves), "x_range": [float(x.min()), float(x.max())],
            "x_quantiles_1_50_99": torch.quantile(x.flatten(), torch.tensor([0.01, 0.5, 0.99])).tolist(),
            "rows": rows}


def figure(space: SpectrogramSpace, sets: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(name, i) for name, w in sets.items() for i in (0, len(w) // 2, len(w) - 1)]
    fig, axes = plt.subplots(4, len(cols), figsize=(2.2 * len(cols), 8.4), squeeze=False)
    for j, (name, i) in enumerate(cols):
        w = sets[name][i:i + 1]
        x = space.encode(w)
        y = space.decode(x)

        def linear_db(wave: torch.Tensor) -> torch.Tensor:  # |X| in dB, scaled to the same [-1, 1] as x
            db = 20 * torch.log10(space.magnitude(wave)[0].clamp(min=1e-4))
            return 2 * (db - space.db_min) / (space.db_max - space.db_min) - 1

        panels = ((x[0, 0], "log-mel, original"), (space.encode(y)[0, 0], "log-mel, round trip"),
                  (linear_db(w), "linear |X|, original"), (linear_db(y), "linear |X|, round trip"))
        for row, (img, label) in enumerate(panels):
            ax = axes[row, j]
            ax.imshow(img.numpy(), origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} #{i}\n{label}" if row == 0 else label, fontsize=8)
    fig.suptitle(f"{space.rate} Hz, log-mel {space.n_mels}×{space.frames} and linear {space.n_fft // 2 + 1}×"
                 f"{space.frames}: originals vs NNLS + fast Griffin-Lim ({space.gl_iters} it.) round trips", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", type=int, default=80, help="held-out synthetic clips (evenly spaced over voices)")
    ap.add_argument("--iters", default="0,8,16,32,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    ap.add_argument("--figure", default="")
    ap.add_argument("--wav", default="", help="a folder for WAVs of the originals and their round trips")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tux = load_tux_digits()
    held = load_spoken_digits("heldout")
    pick = torch.linspace(0, len(held) - 1, min(args.heldout, len(held))).round().long()
    sets = {"Tux Paint (real)": tux.waves, "held-out espeak voices": held.waves[pick]}
    iters = [int(n) for n in args.iters.split(",")]
    space = SpectrogramSpace()
    res = {"date": datetime.date.today().isoformat(), "space": space.settings(), "torch": torch.__version__,
           "threads": args.threads, "sets": {name: measure(w, iters) for name, w in sets.items()}}
    for name, r in res["sets"].items():
        print(f"\n{name}: n={r['n']}, x in [{r['x_range'][0]:.2f}, {r['x_range'][1]:.2f}]")
        print(f"  {'':36} {'SC':>6} {'SCmax':>6} {'SNR dB':>7} {'LSD dB':>7} {'x-MAE':>7} {'s/clip':>7}")
        for row, m in r["rows"].items():
            print(f"  {row:36} {m['sc']:6.3f} {m['sc_max']:6.3f} {m['snr_db']:7.2f} {m['lsd_db']:7.2f} "
                  f"{m.get('x_mae', float('nan')):7.4f} {m.get('seconds_per_clip', float('nan')):7.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if args.figure:
        figure(space, sets, Path(args.figure))
    if args.wav:
        for name, w in sets.items():
            stem = "tuxpaint" if "Tux" in name else "heldout"
            y = space.decode(space.encode(w[:20]))
            write_wav_sequence(Path(args.wav) / f"{stem}-original.wav", w[:20], space.rate, {"set": name})
            write_wav_sequence(Path(args.wav) / f"{stem}-round-trip.wav", y, space.rate,
                               {"set": name, "space": space.settings()})


if __name__ == "__main__":
    main()
