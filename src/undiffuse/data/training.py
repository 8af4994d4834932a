"""What the training loop draws from: images or vectors, by index, with labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..config import Config
from ..errors import UndiffuseError


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


def load_training_data(cfg: Config) -> TrainingData:
    """The data set a config names, at the model's size and channel count."""
    d = cfg.data
    if d.name == "toy":
        from .toy import toy_dataset
        return PointData(toy_dataset(d.toy_set, d.toy_size, seed=cfg.train.seed))
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
    return ImageTrainingData(images, flip=d.flip)
