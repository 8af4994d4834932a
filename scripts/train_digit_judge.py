"""Train the spoken-digit judge shipped as src/undiffuse/pretrained/spoken-digits-judge.

    .venv/bin/python scripts/train_digit_judge.py                # the shipped judge (seed 0)
    .venv/bin/python scripts/train_digit_judge.py --out /tmp/judge --epochs 2

The judge hears what the spoken-digits model makes: the 1 × 64 × 64 log-mel spectrogram of a clip
(undiffuse.spaces.SpectrogramSpace with its defaults: 8 kHz, 8 192 samples), floats in [-1, 1]. It trains on
the training voices of the synthetic spoken digits with random time shifts and gains, and is tested on
voices it never heard (the held-out espeak-ng voices) and on real recorded speech (Tux Paint's digits).
Seeded end to end on the CPU.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from undiffuse.data.spoken_digits import load_spoken_digits
from undiffuse.data.tux_digits import load_tux_digits
from undiffuse.evaluation.classifier import ImageClassifier, save_classifier, training_parser
from undiffuse.spaces.spectrogram import SpectrogramSpace

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/undiffuse/pretrained/spoken-digits-judge"
ARGS = {"in_channels": 1, "num_classes": 10, "image_size": 64, "channels": [16, 32, 64, 64], "convs_per_stage": 1,
        "feature_dim": 128, "dropout": 0.3}
SHIFT = 8            # frames (128 ms) of random time shift either way
GAIN_DB = 6.0        # random gain ± this many dB


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random time shift (the gap filled with silence, x = −1) and a random gain (an offset in x) per clip."""
    n, _, _, frames = x.shape
    shifts = torch.randint(-SHIFT, SHIFT + 1, (n,), generator=generator)
    t = torch.arange(frames)[None, :] - shifts[:, None]  # (N, T): the source frame of each frame
    inside = (t >= 0) & (t < frames)
    index = t.clamp(0, frames - 1)[:, None, None, :].expand_as(x)
    shifted = torch.where(inside[:, None, None, :], x.gather(3, index), torch.full_like(x, -1.0))
    gain = (torch.rand(n, generator=generator) * 2 - 1) * GAIN_DB * 2 / 80  # dB → x units (80 dB span 2)
    return torch.where(shifted > -1, (shifted + gain[:, None, None, None]).clamp(-1, 1), shifted)


def train_judge(out: Path = DEFAULT_OUT, epochs: int = 30, batch_size: int = 64, lr: float = 3e-3,
                weight_decay: float = 0.05, seed: int = 0, threads: int = 2) -> dict:
    """Train, measure held-out and real accuracy, write model.safetensors + config.json to ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    space = SpectrogramSpace()
    train, heldout = load_spoken_digits("train"), load_spoken_digits("heldout")
    real = load_tux_digits(rate=space.rate, length=space.length)
    x_train, y_train = space.encode(train.waves), train.labels
    tests = {"heldout_voices": (space.encode(heldout.waves), heldout.labels),
             "tux_paint_real": (space.encode(real.waves), real.labels)}
    model = ImageClassifier(**ARGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x_train) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order, total = torch.randperm(len(x_train), generator=generator), 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], generator)), y_train[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        accuracy = {k: (model.predict(x) == y).float().mean().item() for k, (x, y) in tests.items()}
        print(f"epoch {epoch + 1}/{epochs}  loss {total / steps_per_epoch:.4f}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in accuracy.items()) + f"  {time.time() - start:.0f} s", flush=True)
    seconds = time.time() - start
    model.eval()
    config = {
        "architecture": "ImageClassifier", "args": ARGS, "class_names": list(train.class_names),
        "input": "(N, 1, 64, 64) float in [-1, 1]: SpectrogramSpace() log-mel spectrograms of 8 kHz clips of "
                 "8 192 samples",
        "features": f"penultimate layer after ReLU, {ARGS['feature_dim']}-d",
        "space": space.settings(),
        **{f"{k}_accuracy": round(v, 4) for k, v in accuracy.items()},
        "test_sizes": {k: len(y) for k, (_, y) in tests.items()},
        "training": {"clips": len(x_train), "epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW",
                     "lr": lr, "lr_schedule": "one-cycle", "weight_decay": weight_decay, "label_smoothing": 0.1,
                     "augmentation": f"time shift ±{SHIFT} frames, gain ±{GAIN_DB:g} dB", "seed": seed,
                     "threads": threads, "seconds": round(seconds), "torch": torch.__version__},
        "data": "undiffuse.data.spoken_digits (espeak-ng and Piper voices; train voices), tested on its held-out "
                "voices and on Tux Paint's recorded digits",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv) if sys.argv[0] else "train_judge()",
        "date": datetime.date.today().isoformat(),
    }
    save_classifier(model, config, out)
    print(f"held-out voices {accuracy['heldout_voices']:.4f}, real speech {accuracy['tux_paint_real']:.4f}, "
          f"trained in {seconds:.0f} s; wrote {out}")
    return config


if __name__ == "__main__":
    a = training_parser(__doc__.split("\n")[0], DEFAULT_OUT, 30, "passes over the training clips", 64).parse_args()
    train_judge(a.out, a.epochs, a.batch_size, a.lr, seed=a.seed, threads=a.threads)
