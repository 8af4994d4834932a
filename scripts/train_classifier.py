"""Train the Fashion-MNIST classifier shipped as src/undiffuse/pretrained/fashion-mnist-classifier.

    .venv/bin/python scripts/train_classifier.py                 # the shipped model (seed 0, 4 epochs)
    .venv/bin/python scripts/train_classifier.py --out /tmp/clf --epochs 1
    .venv/bin/python scripts/train_classifier.py --sprite 16     # the moving-sprites judge

Inputs are those the diffusion model makes: Fashion-MNIST padded 28 → 32, floats in [-1, 1]. With ``--sprite S``
they are what the video measures (undiffuse.evaluation.video) see of a garment shown as an S-pixel moving sprite:
shrunk, tracked, cropped and enlarged back to 28 (the judge shipped as moving-sprites-judge).
Seeded end to end (weights, data order, flips) on the CPU with 2 threads.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from undiffuse.data.fashion_mnist import load_fashion_mnist
from undiffuse.data.images import ImageData
from undiffuse.evaluation.classifier import ImageClassifier, save_classifier, training_parser
from undiffuse.evaluation.video import sprite_views

PRETRAINED = Path(__file__).resolve().parents[1] / "src/undiffuse/pretrained"
DEFAULT_OUT = PRETRAINED / "fashion-mnist-classifier"
SPRITE_OUT = PRETRAINED / "moving-sprites-judge"
ARGS = {"in_channels": 1, "num_classes": 10, "image_size": 32, "channels": [32, 64, 128], "convs_per_stage": 1,
        "feature_dim": 128, "dropout": 0.3}


def sprite_data(data: ImageData, sprite: int) -> ImageData:
    """The garments of ``data`` as the video measures see ``sprite``-pixel moving sprites."""
    garments = data.images[:, :, 2:30, 2:30]  # the 28×28 garment inside the 32×32 padding
    return ImageData(sprite_views(garments, sprite), data.labels, list(data.class_names))


def train_classifier(out: Path = DEFAULT_OUT, epochs: int = 4, batch_size: int = 128, lr: float = 3e-3,
                     weight_decay: float = 0.05, seed: int = 0, threads: int = 2, sprite: int = 0) -> dict:
    """Train, measure test accuracy, write model.safetensors + config.json to ``out``; return the config."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # the initial weights and dropout
    generator = torch.Generator().manual_seed(seed)  # data order and flips
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if sprite:
        train, test = (sprite_data(d, sprite) for d in (train, test))
    model = ImageClassifier(**ARGS).to(memory_format=torch.channels_last)  # oneDNN's fast path on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)

    start = time.time()
    for epoch in range(epochs):
        model.train()
        order, total = torch.randperm(len(train), generator=generator), 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = train.batch(idx, flip=True, generator=generator).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), train.labels[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        accuracy = (model.predict(test.batch(slice(None))) == test.labels).float().mean().item()
        print(f"epoch {epoch + 1}/{epochs}  loss {total / steps_per_epoch:.4f}  test accuracy {accuracy:.4f}  "
              f"{time.time() - start:.0f} s", flush=True)
    train_seconds = time.time() - start

    model = model.to(memory_format=torch.contiguous_format).eval()
    predicted = model.predict(test.batch(slice(None)))
    config = {
        "architecture": "ImageClassifier", "args": ARGS, "class_names": train.class_names,
        "input": "(N, 1, 32, 32) float in [-1, 1]: Fashion-MNIST 28x28 padded to 32 with the background (-1)"
                 + (f"; each garment first shown as a {sprite}-pixel sprite, tracked and cropped back to 28x28 "
                    "(undiffuse.evaluation.video.sprite_views)" if sprite else ""),
        "features": f"penultimate layer after ReLU, {ARGS['feature_dim']}-d",
        "sprite": sprite or None,
        "test_accuracy": round((predicted == test.labels).float().mean().item(), 4),
        "test_accuracy_first_2000": round((predicted[:2000] == test.labels[:2000]).float().mean().item(), 4),
        "training": {"epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW", "lr": lr,
                     "lr_schedule": "one-cycle", "weight_decay": weight_decay, "label_smoothing": 0.1,
                     "augmentation": "random horizontal flip", "seed": seed, "threads": threads,
                     "seconds": round(train_seconds), "torch": torch.__version__},
        "data": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence), Debian package dataset-fashion-mnist",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv) if sys.argv[0] else "train_classifier()",
        "date": datetime.date.today().isoformat(),
    }
    save_classifier(model, config, out)
    print(f"test accuracy {config['test_accuracy']:.4f}, trained in {train_seconds:.0f} s; wrote {out}")
    return config


if __name__ == "__main__":
    parser = training_parser(__doc__.split("\n")[0], DEFAULT_OUT, 4, "passes over the 60 000 training images", 128)
    parser.add_argument("--sprite", type=int, default=0, help="judge garments seen as sprites of this many pixels "
                        f"(default out: {SPRITE_OUT.name})")
    a = parser.parse_args()
    out = SPRITE_OUT if a.sprite and a.out == DEFAULT_OUT else a.out
    train_classifier(out, a.epochs, a.batch_size, a.lr, seed=a.seed, threads=a.threads, sprite=a.sprite)
