"""The real images a model is measured against, and their features cached on disk.

Fashion-MNIST has a held-out test split, which is what generated samples are compared with. The
other image sets have no split; their training images are used and the report says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import Config
from ..data.emoji import data_root
from ..data.images import to_float
from ..errors import UndiffuseError


@dataclass
class Reference:
    """Two disjoint random sets of n real images in [-1, 1]: ``a`` to compare samples with, ``b`` for the
    real-vs-real floor (the score two samples of the data itself get at this n)."""

    a: Tensor
    b: Tensor
    labels_a: Tensor
    source: str        # e.g. "fashion_mnist test split (held out)"
    key: str           # names the cached features


def _real_images(cfg: Config) -> tuple[Tensor, Tensor, str]:
    """uint8 images (N, C, H, W), labels and a description of where they come from."""
    d = cfg.data
    if d.name == "fashion_mnist":
        from ..data.fashion_mnist import load_fashion_mnist
        data = load_fashion_mnist("test", size=d.image_size)
        return data.images, data.labels, "fashion_mnist test split (held out)"
    if d.name == "digits":
        from ..data.digits import load_digits_data
        data = load_digits_data(size=d.image_size)
        return data.images, data.labels, "digits (training images: no held-out split)"
    if d.name in ("spoken_digits", "audio_folder"):  # the clips' spectrograms, as the model's x
        from ..data.sound import load_sound_images
        data = load_sound_images(cfg)
        return data.images, data.labels, f"{d.path or d.name} (training clips' spectrograms)"
    if d.name == "folder":
        from ..data.folder import load_image_folder
        data = load_image_folder(d.path, size=d.image_size, channels=d.channels)
        return data.images, data.labels, f"{d.path} (training images: no held-out split)"
    raise UndiffuseError(f"evaluate compares images with a data set; data.name {d.name!r} is not supported "
                         "(fashion_mnist, digits, an image folder or sound)")


def _held_out_voices(cfg: Config, n: int, seed: int) -> Reference:
    """Spoken digits: the comparison set from the held-out voices (no model trained on them), the floor set from
    the training voices, min(n, held-out clips) each: the floor is then the distance between two sets of real
    speakers, the one a model that learned its training voices perfectly would score."""
    from ..data.sound import load_sound_images
    held, train = load_sound_images(cfg, "heldout"), load_sound_images(cfg, "train")
    m = min(n, len(held))
    g = torch.Generator().manual_seed(seed)
    ia, ib = torch.randperm(len(held), generator=g)[:m], torch.randperm(len(train), generator=g)[:m]
    key = f"{cfg.data.name}-heldout-{cfg.data.image_size}-{len(held)}-{len(train)}-{m}-{seed}"
    return Reference(to_float(held.images[ia]), to_float(train.images[ib]), held.labels[ia],
                     f"spoken_digits held-out voices (n = {m}; floor: as many training clips)", key)


def reference_set(cfg: Config, n: int, seed: int = 0) -> Reference:
    """2n distinct real images drawn at random (fixed seed), split into the comparison set and the floor set
    (spoken digits: :func:`_held_out_voices`)."""
    if cfg.data.name == "spoken_digits":
        return _held_out_voices(cfg, n, seed)
    images, labels, source = _real_images(cfg)
    if images.shape[1] != cfg.data.channels:
        raise UndiffuseError(f"the model makes {cfg.data.channels}-channel images, the data has {images.shape[1]}")
    if 2 * n > len(images):
        raise UndiffuseError(f"n = {n} needs {2 * n} real images (n to compare, n for the real-vs-real floor); "
                             f"{source} has {len(images)}: use --n {len(images) // 2} or less")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    ia, ib = order[:n], order[n:2 * n]
    key = f"{cfg.data.name}-{cfg.data.path or ''}-{cfg.data.image_size}-{cfg.data.channels}-{len(images)}-{n}-{seed}"
    return Reference(to_float(images[ia]), to_float(images[ib]), labels[ia], source, key)


def cached_features(key: str, images: Tensor, extract: Callable[[Tensor], Tensor],
                    cache_dir: str | Path | None = None) -> Tensor:
    """extract(images), computed once and kept as safetensors under ``cache_dir`` (default
    ``$UNDIFFUSE_DATA/features``), keyed by ``key`` and a checksum of the images."""
    digest = hashlib.sha1(json.dumps(key).encode() + images.numpy().tobytes()).hexdigest()[:16]
    path = Path(cache_dir or data_root() / "features") / f"{digest}.safetensors"
    if path.is_file():
        try:
            return load_file(path)["features"]
        except (SafetensorError, OSError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
    features = extract(images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": features.contiguous()}, tmp, metadata={"key": key})
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache costs time, not correctness
    return features
