"""What the training loop draws from: images or vectors, by index, with labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor

from ..config import CAPTIONED, SOUND, Config, DataConfig
from ..errors import UndiffuseError
from .images import ImageData, to_float


class TrainingData(Protocol):
    """A data set the trainer can index: ``batch`` returns (x0 float32, labels long; -1 = none)."""

    class_names: list[str]
    dim: int | None  # vector length for point data; None for images

    @property
    def num_classes(self) -> int: ...
    def __len__(self) -> int: ...
    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...


@dataclass
class PointData:
    """Vectors (N, d), e.g. a 2-D toy set, unlabeled."""

    points: Tensor
    class_names: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def num_classes(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.points)

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.points[indices].float(), torch.full((len(indices),), -1, dtype=torch.long)


@dataclass
class ImageTrainingData:
    """An :class:`~undiffuse.data.images.ImageData` with the run's augmentation."""

    data: object
    flip: bool = False
    dim: None = None

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.data.batch(indices, flip=self.flip, generator=generator), self.data.labels[indices]


@dataclass
class ClipTrainingData(ImageTrainingData):
    """Video clips (:class:`~undiffuse.data.moving_sprites.ClipData`) as float (B, F, C, H, W) in [-1, 1]; a flip
    mirrors every frame of a clip (and so its motion) together."""

    def batch(self, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = to_float(self.data.clips[indices])
        if self.flip:
            mirror = torch.rand(len(indices), generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None, None], x.flip(-1), x)
        return x, self.data.labels[indices]


@dataclass
class TextImageData:
    """Captioned images for text-to-image training: each draw picks one of the image's caption variants.

    ``table`` holds the embeddings of every variant (image i owns rows offsets[i]:offsets[i+1]);
    ``null`` is the empty prompt's, what caption dropout trains on for classifier-free guidance.
    """

    data: object            # ImageData (uint8 images, no labels)
    captions: list[list[str]]
    table: object           # TextEmbedding (sum of variants, L, D)
    offsets: Tensor         # (N + 1,)
    null: object            # TextEmbedding (1, L, D)
    flip: bool = False
    dim: None = None
    class_names: list[str] = field(default_factory=list)
    num_classes: int = 0

    @property
    def context_dim(self) -> int:
        return self.table.tokens.shape[-1]

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: Tensor, generator: torch.Generator):
        x0 = self.data.batch(indices, flip=self.flip, generator=generator)
        start, count = self.offsets[indices], self.offsets[indices + 1] - self.offsets[indices]
        pick = start + (torch.rand(len(indices), generator=generator) * count).long()
        return x0, self.table[pick]


def _captioned_loader(name: str):
    """The loader of a captioned image set: (size, channels, limit) → images with caption variants."""
    from .emoji import load_emoji
    from .openmoji import load_emoji_and_openmoji, load_openmoji
    from .tuxpaint import load_tuxpaint
    return {"emoji": load_emoji, "openmoji": load_openmoji, "emoji+openmoji": load_emoji_and_openmoji,
            "tuxpaint": load_tuxpaint}[name]


def load_captioned(d: DataConfig):
    """The captioned image set a data config names, with its colour captions and copies (``d.recolour``)."""
    from .recolour import recoloured

    data = _captioned_loader(d.name)(size=d.image_size, channels=d.channels, limit=d.limit or None)
    return recoloured(data, d.recolour) if d.recolour else data


def load_text_image_data(cfg: Config, progress: bool = True) -> TextImageData:
    """Captioned images (Twemoji, OpenMoji, both, or Tux Paint stamps) with caption variants, embedded once
    by the frozen text encoder (cached under the data folder)."""
    from ..text import TextEncoder, cached_embeddings
    from .emoji import data_root

    d = cfg.data
    emoji = load_captioned(d)
    flat = [c for caps in emoji.captions for c in caps]
    counts = torch.tensor([len(c) for c in emoji.captions])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    encoder = TextEncoder(max_length=d.text_length)
    table = cached_embeddings(encoder, flat, data_root() / "embeddings", progress=progress)
    images = ImageData(emoji.images, torch.full((len(emoji),), -1))
    return TextImageData(images, emoji.captions, table, offsets, encoder([""]), flip=d.flip)


def load_training_data(cfg: Config) -> TrainingData:
    """The data set a config names, at the model's size and channel count."""
    d = cfg.data
    if d.name == "toy":
        from .toy import toy_dataset
        return PointData(toy_dataset(d.toy_set, d.toy_size, seed=cfg.train.seed))
    if d.name in CAPTIONED and cfg.model.backbone != "autoencoder":  # an autoencoder needs the images only
        return load_text_image_data(cfg)
    if d.name in CAPTIONED:
        captioned = load_captioned(d)
        return ImageTrainingData(ImageData(captioned.images, torch.full((len(captioned),), -1)), flip=d.flip)
    if d.name == "moving_sprites":
        from .moving_sprites import moving_sprites
        clips = moving_sprites(d.clips, frames=d.frames, size=d.image_size, sprite=d.image_size // 2,
                               seed=cfg.train.seed)
        return ClipTrainingData(clips, flip=d.flip)
    if d.name == "clip_folder":
        from .clip_folder import load_clip_folder
        clips = load_clip_folder(d.path, frames=d.frames, size=d.image_size, channels=d.channels, stride=d.stride)
        if d.limit:
            clips = replace(clips, clips=clips.clips[:d.limit], labels=clips.labels[:d.limit])
        return ClipTrainingData(clips, flip=d.flip)
    if d.name in SOUND:  # clips as spectrogram images of the config's [space]
        from .sound import load_sound_images
        return ImageTrainingData(load_sound_images(cfg))
    if d.name == "fashion_mnist":
        from .fashion_mnist import load_fashion_mnist
        images = load_fashion_mnist("train", size=d.image_size)
    elif d.name == "digits":
        from .digits import load_digits_data
        images = load_digits_data(size=d.image_size)
    else:
        from .folder import load_image_folder
        images = load_image_folder(d.path, size=d.image_size, channels=d.channels)
    if images.channels != d.channels:
        raise UndiffuseError(f"data.channels is {d.channels} but the {d.name} images have {images.channels}")
    if d.limit:
        images = images.subset(torch.arange(min(d.limit, len(images))))
    return ImageTrainingData(images, flip=d.flip)
