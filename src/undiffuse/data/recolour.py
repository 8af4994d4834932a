"""Captions that name the colour drawn, and hue-rotated copies that teach a text model colour words.

The emoji sets' captions are names ("kite", "grinning face") that rarely say a colour, so a text model
learns colour words only from the few names that hold one ("red apple"), each tied to one object. Captions
that describe what is drawn teach attributes (the recaptioning of DALL·E 3, Betker et al. 2023); here the
attribute is measured rather than written: the hue of an image's mean foreground colour
(:mod:`undiffuse.evaluation.colour`). Every image whose drawn colour is a named one, and whose captions
name no colour, gets the variant "a <colour> <name>"; ``copies`` hue-rotated copies of it (the same shapes,
the white background kept) are added, each turned towards another named colour (seeded) and captioned with
the colour judged on the result, so a caption never names a colour the image does not show (skin-tone
variants are not copied: their toneless twin is).
"""

from __future__ import annotations

import colorsys
import re

import numpy as np
import torch
from PIL import Image

from ..evaluation.colour import HUES, colour_name, mean_foreground_colour
from .emoji import CaptionedImages

# words that already give an image a colour: such images keep their captions and are not rotated
COLOUR_WORDS = frozenset({"red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black",
                          "white", "grey", "gray", "gold", "golden", "silver"})

TONE = "skin tone"


def names_colour(captions: list[str]) -> bool:
    """Whether any caption holds a colour word."""
    return any(w in COLOUR_WORDS for c in captions for w in re.findall(r"[a-z]+", c.lower()))


def rotate_hue(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """A uint8 RGB image (3, H, W) with every pixel's hue turned by ``degrees`` (HSV; greys and white stay)."""
    hsv = np.array(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256
    rgb = np.array(Image.fromarray(hsv, "HSV").convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _judge(image: torch.Tensor) -> tuple[str, float]:
    """The colour word drawn in a uint8 image and the hue (degrees) of its mean foreground colour."""
    mean = mean_foreground_colour(image[None].float() / 127.5 - 1)[0]
    return colour_name(mean), 360 * colorsys.rgb_to_hsv(*(float(c) for c in mean))[0]


def recoloured(data: CaptionedImages, copies: int, seed: int = 0) -> CaptionedImages:
    """``data`` with colour captions on its coloured images and ``copies`` hue-rotated copies of each
    (RGB only); the copies follow the originals, in order."""
    if copies < 0 or copies >= len(HUES):
        raise ValueError(f"copies must be in [0, {len(HUES) - 1}], got {copies}")
    if data.images.shape[1] != 3:
        return data  # grey images have no hue
    g = torch.Generator().manual_seed(seed)
    captions = [list(c) for c in data.captions]
    extra_images, extra_captions, extra_categories = [], [], []
    for i, (image, caps) in enumerate(zip(data.images, data.captions, strict=True)):
        drawn, hue = _judge(image)
        if drawn == "none" or names_colour(caps):
            continue
        name = caps[0]
        captions[i].append(f"a {drawn} {name}")
        others = [c for c in HUES if c != drawn]
        if any(TONE in c for c in caps):
            continue  # skin-tone variants: one rotated person (the variant without a tone) is enough
        for j in torch.randperm(len(others), generator=g)[:copies].tolist():
            turned = rotate_hue(image, HUES[others[j]] - hue)
            got, _ = _judge(turned)
            if got == "none":
                continue
            extra_images.append(turned)
            extra_captions.append([f"a {got} {name}", f"{got} {name}"])
            if data.categories:
                extra_categories.append(data.categories[i])
    if not extra_images:
        return CaptionedImages(data.images, captions, data.categories, data.skipped, data.attribution)
    return CaptionedImages(torch.cat([data.images, torch.stack(extra_images)]), captions + extra_captions,
                           list(data.categories) + extra_categories, data.skipped, data.attribution)
