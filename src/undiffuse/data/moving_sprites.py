"""Moving sprites: seeded clips of a Fashion-MNIST garment gliding and bouncing on a dark canvas (Moving-MNIST-like,
Srivastava et al. 2015), each with its class, a caption and the physics that made it.

A clip: a garment (a training or test image, resized to ``sprite`` pixels) starts at a random place with a random
velocity (``speed`` pixels per frame in a random direction) and moves in a straight line, reflecting off the walls
(the sprite's box stays inside the canvas: a bounce mirrors the position about the wall). Frames are rendered by
pasting the sprite at the rounded position (max over the dark background). The generator's exact positions are
returned, so that generated motion can be judged against the physics: straight lines between bounces.

Captions name the garment and its main direction of motion ("a sneaker moving left", "a bag moving up and right").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiffuseError
from .fashion_mnist import CLASS_NAMES, load_fashion_mnist


@dataclass
class ClipData:
    """N clips as uint8 (N, F, C, H, W) with labels (N,) (-1: none), class names, captions, and where known the
    sprite's top-left position per frame (N, F, 2) as (row, column) floats."""

    clips: Tensor
    labels: Tensor
    class_names: list[str]
    captions: list[str] = field(default_factory=list)
    positions: Tensor | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: str = ""

    def __post_init__(self):
        if self.clips.dtype != torch.uint8 or self.clips.ndim != 5:
            raise UndiffuseError(f"ClipData needs uint8 clips (N, F, C, H, W), got {self.clips.dtype} "
                                 f"{tuple(self.clips.shape)}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def frames(self) -> int:
        return int(self.clips.shape[1])


def bounce(start: Tensor, velocity: Tensor, frames: int, limit: float) -> Tensor:
    """Positions (N, frames, 2) of points moving at ``velocity`` (N, 2) from ``start`` (N, 2) inside [0, limit],
    reflected at both walls: the unfolded straight line folded back into the box (a triangle wave)."""
    t = torch.arange(frames, dtype=torch.float64)[None, :, None]
    free = start[:, None, :].double() + velocity[:, None, :].double() * t   # the straight line, unfolded
    period = 2 * limit
    folded = torch.remainder(free, period)
    return torch.where(folded > limit, period - folded, folded).float()


def direction_words(velocity: Tensor) -> list[str]:
    """"left", "up and right", …: the components of (d_row, d_col) that carry at least 40 % of the speed."""
    words = []
    for dr, dc in velocity.tolist():
        speed = math.hypot(dr, dc) or 1.0
        vertical = ("down" if dr > 0 else "up") if abs(dr) >= 0.4 * speed else ""
        horizontal = ("right" if dc > 0 else "left") if abs(dc) >= 0.4 * speed else ""
        words.append(" and ".join(w for w in (vertical, horizontal) if w))
    return words


def shrink(images: Tensor, sprite: int) -> Tensor:
    """uint8 images (N, C, h, w) → uint8 sprites (N, C, sprite, sprite), antialiased bilinear."""
    return F.interpolate(images.float(), size=(sprite, sprite), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


def render(sprites: Tensor, positions: Tensor, size: int) -> Tensor:
    """Paste sprites (N, C, s, s) uint8 at the rounded positions (N, F, 2) on dark size×size canvases:
    (N, F, C, size, size) uint8, the max of sprite and background."""
    n, c, s, _ = sprites.shape
    frames = positions.shape[1]
    out = torch.zeros(n, frames, c, size, size, dtype=torch.uint8)
    rc = positions.round().long().clamp(0, size - s)
    for i in range(n):
        for f in range(frames):
            r, col = rc[i, f].tolist()
            out[i, f, :, r:r + s, col:col + s] = sprites[i]
    return out


def moving_sprites(n: int, *, frames: int = 8, size: int = 32, sprite: int = 16, speed: tuple[float, float] = (1.0,
                   2.5), split: str = "train", seed: int = 0, classes: list[int] | None = None) -> ClipData:
    """``n`` seeded clips of moving garments (clip i uses garment i of ``split`` unless ``classes`` picks them)."""
    if not 1 <= frames <= 64 or sprite >= size or n < 1 or not 0 < speed[0] <= speed[1]:
        raise UndiffuseError(f"moving sprites: need n ≥ 1, 1 ≤ frames ≤ 64, sprite < size and 0 < speed range, got "
                             f"n={n}, frames={frames}, sprite={sprite}, size={size}, speed={speed}")
    g = torch.Generator().manual_seed(seed)
    garments = load_fashion_mnist(split, size=28)
    if classes is not None:
        pool = torch.cat([torch.nonzero(garments.labels == c).flatten() for c in classes])
        index = pool[torch.randint(len(pool), (n,), generator=g)]
    else:
        index = torch.randperm(len(garments), generator=g)[:n] if n <= len(garments) else \
            torch.randint(len(garments), (n,), generator=g)
    small = shrink(garments.images[index], sprite)
    limit = float(size - sprite)
    start = torch.rand(n, 2, generator=g) * limit
    angle = torch.rand(n, generator=g) * 2 * math.pi
    magnitude = speed[0] + torch.rand(n, generator=g) * (speed[1] - speed[0])
    velocity = torch.stack([torch.sin(angle), torch.cos(angle)], dim=1) * magnitude[:, None]
    positions = bounce(start, velocity, frames, limit)
    labels = garments.labels[index]
    names = [CLASS_NAMES[int(c)].lower() for c in labels]
    captions = [f"a {name} moving {way}" for name, way in zip(names, direction_words(velocity), strict=True)]
    return ClipData(render(small, positions, size), labels, list(CLASS_NAMES), captions, positions)
