"""A folder of images (PNG, JPEG, WebP, anything Pillow opens) as an ImageData.

Each top-level sub-folder is a class (sorted names; deeper folders belong to their top-level
one); files directly in the root are unlabeled (-1). Every image is converted to RGB or gray,
its transparency flattened onto white, its shorter side resized to ``size`` and its centre
cropped. Files that cannot be read are skipped and named in one summary line — never a crash,
never a silent loss.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..errors import UndiffuseError
from .images import ImageData

log = logging.getLogger(__name__)

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit (~ 9 459²)
PROGRESS_MIN_FILES = 500  # show a progress bar from this many files on
SUMMARY_MAX_NAMES = 20  # the summary line names this many skipped files, the rest are counted
# Extensions Pillow registers but cannot decode without outside programs, or that are not pictures.
_NOT_RASTER = {".eps", ".ps", ".pdf", ".bufr", ".grib", ".h5", ".hdf", ".emf", ".wmf", ".mpeg", ".mpg"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_16_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def image_extensions() -> set[str]:
    """Lower-case file extensions (with the dot) of the raster formats this Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN} - _NOT_RASTER


def to_rgb_or_gray(im: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "RGB" (channels=3) or "L" (channels=1); transparency goes onto white."""
    if im.mode in _16_BIT_MODES or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 1 / 257 if im.mode in _16_BIT_MODES else (255.0 if a.max(initial=0) <= 1.0 else 1.0)
        im = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB" if channels == 3 else "L")


def centre_crop_resize(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (Lanczos) and keep the centre size×size square."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))  # crop first: no pixel outside the square leaks in
    return im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0 if s > 3 * size else None)


def read_image(path: Path, size: int, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray | str:
    """One image as uint8 (C, size, size), or the reason it was skipped ("empty", "truncated", …)."""
    try:
        if path.stat().st_size == 0:
            return "empty"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check is below
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    return f"too large: {im.width}×{im.height}"
                im.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at a reduced scale
                im.load()
                im = to_rgb_or_gray(ImageOps.exif_transpose(im), channels)  # camera orientation first
                im = centre_crop_resize(im, size)
    except Image.DecompressionBombError:
        return "too large"
    except Image.UnidentifiedImageError:
        return "not an image"
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error…
        message = str(e).split("\n")[0]
        return "truncated" if "truncated" in message else f"unreadable: {message[:60]}"
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_image_tensor(path: str | Path, size: int, channels: int, error: str = "cannot read") -> torch.Tensor:
    """One image file as (C, size, size) float in [-1, 1] (converted, centre-cropped, resized), or a
    one-line error "<error> <path>: <reason>"."""
    arr = read_image(Path(path), size, channels)
    if isinstance(arr, str):
        raise UndiffuseError(f"{error} {path}: {arr}")
    return torch.from_numpy(np.array(arr)).float() / 127.5 - 1


def skip_summary(skipped: list[tuple[str, str]], total: int) -> str:
    """'skipped 2 of 50 files: a.png (truncated), b.jpg (empty)', or '' when nothing was skipped."""
    if not skipped:
        return ""
    names = ", ".join(f"{name} ({reason})" for name, reason in skipped[:SUMMARY_MAX_NAMES])
    more = f" and {len(skipped) - SUMMARY_MAX_NAMES} more" if len(skipped) > SUMMARY_MAX_NAMES else ""
    return f"skipped {len(skipped)} of {total} files: {names}{more}"


def list_folder(root: Path, extensions: set[str], kind: str, looked_for: str) -> tuple[list[Path], list[Path]]:
    """Files under ``root`` with one of ``extensions`` (sorted; hidden files and folders ignored) and their paths
    relative to ``root``. Other files are counted in one logged line; none found is a one-line error naming
    ``kind`` (e.g. "image files") and ``looked_for``."""
    files, others = [], Counter()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext in extensions:
                files.append(Path(folder, name))
            else:
                others[ext or "(no extension)"] += 1
    if others:
        log.info("%s: ignored %d files that are not %s (%s)", root, sum(others.values()), kind,
                 ", ".join(f"{ext} ×{n}" for ext, n in others.most_common(5)))
    if not files:
        raise UndiffuseError(f"no {kind} in {root} (looked for {looked_for})")
    return files, [f.relative_to(root) for f in files]


def folder_classes(relative: list[Path]) -> tuple[list[str], dict[str, int]]:
    """The top-level sub-folders of these relative paths as sorted class names, and each name's index."""
    class_names = sorted({r.parts[0] for r in relative if len(r.parts) > 1})
    return class_names, {name: i for i, name in enumerate(class_names)}


def read_each(root: Path, files: list[Path], relative: list[Path], class_index: dict[str, int],
              read: Callable[[Path], Any], keep: Callable[[Any, int], None], *, what: str, unit: str,
              progress: bool | None) -> tuple[list[int], list[tuple[str, str]], str]:
    """Read every file: ``read`` returns its array or a string saying why not; readable ones go to ``keep(array, i)``
    in order. Returns the labels (top-level folder's class, -1 in the root), the skipped (name, why) pairs and their
    summary line, logged as a warning; refuses a folder with nothing readable. ``progress`` shows a bar (default:
    from 500 files on)."""
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    show = progress if progress is not None else len(files) >= PROGRESS_MIN_FILES
    for file, rel in zip(tqdm(files, desc=f"reading {root.name}", unit=unit, disable=not show), relative,
                         strict=True):
        result = read(file)
        if isinstance(result, str):
            skipped.append((rel.as_posix(), result))
            continue
        keep(result, len(labels))
        labels.append(class_index[rel.parts[0]] if len(rel.parts) > 1 else -1)
    summary = skip_summary(skipped, len(files))
    if skipped:
        log.warning("%s: %s", root, summary)
    if not labels:
        raise UndiffuseError(f"no readable {what} in {root}: {summary}")
    return labels, skipped, summary


def load_image_folder(path: str | os.PathLike, size: int, channels: int = 3, *,
                      max_pixels: int = MAX_PIXELS, progress: bool | None = None) -> ImageData:
    """All images under ``path`` as (N, channels, size, size) uint8; sub-folders are classes.

    ``progress`` shows a bar (default: from 500 files on). The summary of skipped files is logged
    as a warning and kept in ``ImageData.summary`` / ``ImageData.skipped``.
    """
    root = Path(path)
    if not root.is_dir():
        raise UndiffuseError(f"image folder {root} does not exist or is not a folder")
    if channels not in (1, 3):
        raise UndiffuseError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if not isinstance(size, int) or size < 1:
        raise UndiffuseError(f"size must be a positive integer, got {size!r}")
    files, relative = list_folder(root, image_extensions(), "image files",
                                  f"{', '.join(sorted(image_extensions())[:8])}…")
    class_names, class_index = folder_classes(relative)
    if class_names and any(len(r.parts) == 1 for r in relative):
        log.warning("%s: files directly in the folder are unlabeled (-1) beside the classes %s", root, class_names)

    images = np.empty((len(files), channels, size, size), np.uint8)  # filled in place: no second copy

    def keep(image: np.ndarray, i: int) -> None:
        images[i] = image

    labels, skipped, summary = read_each(root, files, relative, class_index,
                                         lambda f: read_image(f, size, channels, max_pixels), keep,
                                         what="images", unit="img", progress=progress)
    return ImageData(torch.from_numpy(images[:len(labels)]), torch.tensor(labels, dtype=torch.long),
                     class_names, skipped, summary)
