"""Captioned clip-art: the Tux Paint stamps (GPL-2) from Debian's ``tuxpaint-stamps-default``.

Each PNG stamp with an English caption in the ``.txt`` beside it ("A red kangaroo.") becomes one
image, scaled to fit a white square (stamps are not square: nothing is cropped), with caption
variants: the sentence and "<sentence>, <category words>" from its folder ("animals mammals").
SVG stamps are skipped and counted (no rasteriser is a dependency); unreadable PNGs are named.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UndiffuseError
from .emoji import CaptionedImages
from .folder import MAX_PIXELS, to_rgb_or_gray

STAMPS = Path("/usr/share/tuxpaint/stamps")
ATTRIBUTION = "Tux Paint stamps (New Breed Software and contributors, GPL-2), Debian package tuxpaint-stamps-default"


def english_caption(txt: Path) -> str | None:
    """The first line of a stamp's .txt (the English text), without its final full stop; None if empty."""
    try:
        first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    first = first.rstrip(".").strip()
    return first[:1].lower() + first[1:] if first and "=" not in first else None


def fit_on_white(path: Path, size: int, channels: int) -> np.ndarray | str:
    """Scale an image to fit size×size (keeping its aspect), centred on white: (C, size, size) uint8."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return f"too large: {im.width}×{im.height}"
            im.load()
            im = to_rgb_or_gray(im, channels)
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError…
        return f"unreadable: {str(e).splitlines()[0][:60]}"
    im.thumbnail((size, size), Image.LANCZOS)
    canvas = Image.new(im.mode, (size, size), "white")
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    a = np.asarray(canvas, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_tuxpaint(size: int = 32, channels: int = 3, root: str | os.PathLike | None = None,
                  limit: int | None = None) -> CaptionedImages:
    """The captioned PNG stamps under ``root`` (default: Debian's folder), sorted by path."""
    folder = Path(root) if root else STAMPS
    if not folder.is_dir():
        raise UndiffuseError(f"no Tux Paint stamps at {folder}: apt-get install tuxpaint-stamps-default")
    images, captions, categories, skipped = [], [], [], []
    for png in sorted(folder.rglob("*.png")):
        caption = english_caption(png.with_suffix(".txt"))
        if caption is None:
            continue  # thumbnails, mirrored variants and textures carry no caption
        arr = fit_on_white(png, size, channels)
        if isinstance(arr, str):
            skipped.append((str(png.relative_to(folder)), arr))
            continue
        category = " ".join(png.parent.relative_to(folder).parts)
        images.append(arr)
        captions.append([caption, f"{caption}, {category}"] if category else [caption])
        categories.append(png.parent.relative_to(folder).parts[0] if category else "")
        if limit and len(images) >= limit:
            break
    svg = sum(1 for _ in folder.rglob("*.svg"))
    if svg:
        skipped.append((f"{svg} SVG stamps", "not rasterised"))
    if not images:
        raise UndiffuseError(f"no captioned PNG stamps under {folder}")
    return CaptionedImages(torch.from_numpy(np.stack(images)), captions, categories, skipped, ATTRIBUTION)
