"""Which colour did a model draw? The hue of the mean colour of an image's non-background pixels.

A judge for prompts that name a colour ("a red car"): images on a white background (as the emoji sets are)
are reduced to the mean RGB of the pixels that differ from white, whose hue is matched to the nearest named
hue; too little saturation (grey, black or almost nothing drawn) is "none".
"""

from __future__ import annotations

import colorsys

import torch
from torch import Tensor

# hue in degrees of each colour word (HSV), the nearest one wins. No "orange": emoji yellows (Twemoji's face 43°,
# star 36°) and oranges (orange heart 33°) overlap in hue, so hues up to 25° count as red and 25-85° as yellow.
HUES = {"red": 0.0, "yellow": 50.0, "green": 120.0, "blue": 220.0, "purple": 285.0}


def mean_foreground_colour(images: Tensor, background_threshold: float = 0.15) -> Tensor:
    """(B, 3, H, W) in [-1, 1] → (B, 3) mean RGB in [0, 1] of the pixels farther than the threshold from white
    (max-channel distance); an image with no such pixel gets white."""
    rgb = (images.float().clamp(-1, 1) + 1) / 2                                     # (B, 3, H, W)
    fg = (1 - rgb).amax(1, keepdim=True) > background_threshold                     # (B, 1, H, W)
    count = fg.sum((2, 3)).clamp_min(1)
    mean = (rgb * fg).sum((2, 3)) / count
    return torch.where(fg.any((2, 3)), mean, torch.ones_like(mean))


def colour_name(rgb: Tensor, colours: tuple[str, ...] = tuple(HUES), min_saturation: float = 0.2) -> str:
    """The colour word whose hue is nearest that of ``rgb`` (3,), or "none" when it is not saturated enough."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if s < min_saturation or v < 0.15:
        return "none"
    hue = 360 * h
    return min(colours, key=lambda c: min(abs(hue - HUES[c]), 360 - abs(hue - HUES[c])))


def drawn_colours(images: Tensor, colours: tuple[str, ...] = tuple(HUES)) -> list[str]:
    """The colour word for each image of a batch."""
    return [colour_name(c, colours) for c in mean_foreground_colour(images)]
