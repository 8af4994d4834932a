"""A small Fashion-MNIST classifier, to score generated images: accuracy of the intended class and
penultimate-layer features for a Fréchet distance in the data's own domain.

It reads the diffusion model's own input: (N, 1, 32, 32) floats in [-1, 1], Fashion-MNIST padded
28 → 32 with the background. Weights ship as safetensors + config.json (never a pickle) and are
made by ``scripts/train_classifier.py``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import UndiffuseError

DEFAULT_NAME = "fashion-mnist-classifier"


class ImageClassifier(nn.Module):
    """VGG-style CNN: per stage ``convs_per_stage`` 3×3 conv + BatchNorm + ReLU with a 2×2 max-pool after the
    last conv; then a hidden layer and the logits.

    The hidden layer's activations (``feature_dim`` wide, after ReLU) are the features.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32,
                 channels: tuple[int, ...] = (32, 64, 128), convs_per_stage: int = 1, feature_dim: int = 128,
                 dropout: float = 0.3):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        layers, c_in = [], in_channels
        for c in channels:
            for i in range(convs_per_stage):
                layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=False))
                if i == convs_per_stage - 1:  # pool before BN + ReLU: same result (both monotone), ¼ the work
                    layers.append(nn.MaxPool2d(2))
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.conv = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def embed(self, x: Tensor) -> Tensor:  # (B, C, H, W) in [-1, 1] -> (B, feature_dim)
        return self.hidden(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) in [-1, 1] -> (B, num_classes) logits
        return self.head(self.embed(x))

    def _check(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:  # unambiguous: 0–255 pixels
            images = images.float() / 127.5 - 1
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise UndiffuseError(f"the classifier takes images (N, {', '.join(map(str, expected))}) in [-1, 1], "
                                 f"got {tuple(images.shape)}")
        return images.float()

    @torch.no_grad()
    def _batched(self, fn, images: Tensor, batch_size: int) -> Tensor:
        images, was_training = self._check(images), self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            return torch.cat([fn(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
        finally:
            self.train(was_training)

    def predict(self, images: Tensor, batch_size: int = 500) -> Tensor:
        """Class indices (N,) of images (N, C, H, W) in [-1, 1] (or uint8 0–255)."""
        return self._batched(lambda x: self(x).argmax(1), images, batch_size)

    def features(self, images: Tensor, batch_size: int = 500) -> Tensor:
        """Penultimate-layer features (N, feature_dim), for a Fréchet distance in the data's domain."""
        return self._batched(self.embed, images, batch_size)


def predict(model: ImageClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Class indices (N,) for images (N, C, H, W) in [-1, 1]."""
    return model.predict(images, batch_size)


def features(model: ImageClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate-layer features (N, feature_dim) for images (N, C, H, W) in [-1, 1]."""
    return model.features(images, batch_size)


def save_classifier(model: ImageClassifier, config: dict, out: Path) -> None:
    """Write model.safetensors + config.json into ``out``, each atomically (a crash leaves the previous file
    whole) and readable by every user (package data)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, write in [("model.safetensors", lambda p: save_file(tensors, p)),
                        ("config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))]:
        tmp = out / (name + ".tmp")
        write(str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)


def training_parser(description: str, default_out: Path, epochs: int, epochs_help: str, batch_size: int):
    """The command line of the scripts that train a shipped classifier (scripts/train_classifier.py,
    scripts/train_digit_judge.py)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help="folder for model.safetensors + config.json")
    parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's folder by name, else a folder (or its model.safetensors) on disk."""
    shipped = resources.files("undiffuse") / "pretrained" / str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.is_dir():
        return Path(str(shipped))
    path = Path(name_or_path)
    if path.is_file():
        path = path.parent
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UndiffuseError(f"no classifier at {name_or_path}: expected a shipped name such as {DEFAULT_NAME!r} "
                             "or a folder with model.safetensors and config.json")
    return path


def load_classifier(name_or_path: str | os.PathLike = DEFAULT_NAME, device: str | torch.device = "cpu"
                    ) -> ImageClassifier:
    """Load a classifier from safetensors + config.json (no pickle), in eval mode; ``.config`` holds the JSON."""
    folder = _resolve(name_or_path)
    try:
        config = json.loads((folder / "config.json").read_text())
        model = ImageClassifier(**config["args"])
    except (ValueError, KeyError, TypeError) as e:
        raise UndiffuseError(f"bad classifier config {folder / 'config.json'}: {e}") from None
    weights_file = folder / "model.safetensors"
    try:
        tensors = load_file(weights_file)
    except (SafetensorError, OSError) as e:
        raise UndiffuseError(f"corrupt weights file {weights_file}: {e}") from None
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in tensors:
            raise UndiffuseError(f"weights file {weights_file} lacks tensor {key!r}")
        if tensors[key].shape != ref.shape:
            raise UndiffuseError(f"tensor {key!r} in {weights_file} has shape {tuple(tensors[key].shape)}, "
                                 f"the model expects {tuple(ref.shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UndiffuseError(f"weights file {weights_file} has unexpected tensor {extra[0]!r}")
    model.load_state_dict(tensors)
    model.config = config
    return model.to(device).eval()
