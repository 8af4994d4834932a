"""How the spectrogram round trip sounds to the spoken-digit judge: its accuracy on real and held-out clips as they
are and after encode → decode (mel inversion + fast Griffin-Lim) → encode.

    OMP_NUM_THREADS=1 .venv/bin/python bench/digit_judge.py --json bench/results/digit-judge.json

A representation that loses the words would show as a drop from the first column to the second.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from undiffuse.data.spoken_digits import load_spoken_digits
from undiffuse.data.tux_digits import load_tux_digits
from undiffuse.evaluation.classifier import load_classifier
from undiffuse.spaces.spectrogram import SpectrogramSpace


def accuracy(judge, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((judge.predict(x) == labels).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    space, judge = SpectrogramSpace(), load_classifier("spoken-digits-judge")
    sets = {"Tux Paint, real": load_tux_digits(rate=space.rate, length=space.length),
            "held-out espeak voices": load_spoken_digits("heldout")}
    rows = {}
    for name, data in sets.items():
        x = space.encode(data.waves)
        t0 = time.perf_counter()
        heard = space.encode(space.decode(x))
        seconds = time.perf_counter() - t0
        rows[name] = {"n": len(data), "as_is": accuracy(judge, x, data.labels),
                      "round_trip": accuracy(judge, heard, data.labels), "decode_s_per_clip": seconds / len(data)}
        r = rows[name]
        print(f"{name} (n = {r['n']}): {r['as_is']:.1%} as recorded, {r['round_trip']:.1%} after the round trip "
              f"({r['decode_s_per_clip']:.3f} s per clip)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "judge": judge.config,
                                            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
