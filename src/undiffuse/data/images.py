"""The in-memory image data set shared by every image source, and its transforms.

Images stay uint8 (N, C, H, W) in memory — 60 000 Fashion-MNIST images at 32×32 take 61 MB
instead of 245 MB as float32 — and become float in [-1, 1] one batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiffuseError


def to_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (x/127.5 − 1, the DDPM convention)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """float in [-1, 1] -> uint8 in [0, 255], clamped and rounded (inverse of ``to_float``)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each image of a (B, C, H, W) batch left–right with probability p, drawn from ``generator``."""
    device = generator.device if generator is not None else "cpu"
    flip = torch.rand(x.shape[0], generator=generator, device=device) < p  # (B,) one draw per image
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def pad_images(images: Tensor, size: int, value: int = 0) -> Tensor:
    """Centre a (N, C, h, w) batch on a size×size canvas filled with ``value`` (no resampling)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise UndiffuseError(f"cannot pad {h}×{w} images to {size}×{size}: they are larger")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top), value=value)


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize a uint8 (N, C, h, w) batch to size×size, bilinear with antialiasing; uint8 out."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):  # chunks bound the float32 copy's memory
        x = F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass
class ImageData:
    """N square images, uint8 (N, C, H, W), with labels (N,) int64 (-1 = unlabeled) and class names.

    ``skipped`` lists (file, reason) for inputs that could not be read and ``summary`` says so in
    one line (empty when nothing was skipped), so a loss of data is never silent.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: str = ""

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise UndiffuseError(f"ImageData needs uint8 images (N, C, H, W), got {self.images.dtype} "
                                 f"{tuple(self.images.shape)}")
        if self.images.shape[1] not in (1, 3):
            raise UndiffuseError(f"ImageData needs 1 or 3 channels, got {self.images.shape[1]}")
        if self.images.shape[2] != self.images.shape[3]:
            raise UndiffuseError(f"ImageData needs square images, got {tuple(self.images.shape[2:])}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if self.labels.shape != (self.images.shape[0],):
            raise UndiffuseError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < -1:
                raise UndiffuseError(f"labels must be ≥ -1 (-1 = unlabeled), got {lo}")
            if hi >= len(self.class_names):
                raise UndiffuseError(f"label {hi} has no class name ({len(self.class_names)} classes)")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        """Side length in pixels (images are square)."""
        return self.images.shape[-1]

    def batch(self, indices: Tensor | list[int] | slice, *, flip: bool = False,
              generator: torch.Generator | None = None) -> Tensor:
        """Float32 batch (B, C, H, W) in [-1, 1]; ``flip`` mirrors each image with p = ½ from ``generator``.

        The labels of the same batch are ``data.labels[indices]``.
        """
        x = to_float(self.images[indices])
        return random_hflip(x, generator) if flip else x

    def subset(self, indices: Tensor | list[int] | slice) -> ImageData:
        """A view on some of the images (for splits and quick tests)."""
        return ImageData(self.images[indices], self.labels[indices], list(self.class_names))
