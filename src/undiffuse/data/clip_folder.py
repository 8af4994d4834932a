"""A folder of short video clips (GIF, MP4, WebM, MOV, MKV, AVI) as ClipData, as :mod:`.folder` does for images.

Each top-level sub-folder is a class (sorted names; deeper folders belong to their top-level one); files directly in
the root are unlabeled (-1). From every clip ``frames`` frames are taken at ``stride`` from its first frame, each
converted to gray or RGB, its shorter side resized to ``size`` and its centre cropped. GIFs are read by Pillow, the
rest by the ffmpeg that imageio-ffmpeg bundles. Empty, unreadable and too-short clips are skipped and named in one
logged line: never a traceback, never a silent loss.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

from ..errors import UndiffuseError
from .folder import centre_crop_resize, folder_classes, list_folder, read_each, to_rgb_or_gray
from .moving_sprites import ClipData

log = logging.getLogger(__name__)

CLIP_EXTENSIONS = {".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}


def _gif_frames(path: Path, needed: int):
    with Image.open(path) as im:
        for i, frame in enumerate(ImageSequence.Iterator(im)):
            if i >= needed:
                return
            yield frame.convert("RGBA")


def _ffmpeg_frames(path: Path, needed: int):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UndiffuseError("reading MP4 / WebM clips needs imageio-ffmpeg: pip install 'undiffuse[video]'") from None
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        w, h = next(reader)["size"]
        for i, buf in enumerate(reader):
            if i >= needed:
                return
            yield Image.fromarray(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
    finally:
        reader.close()


def read_clip(path: Path, frames: int, size: int, channels: int, stride: int = 1) -> np.ndarray | str:
    """One clip as uint8 (frames, C, size, size), or the reason it was skipped."""
    needed = (frames - 1) * stride + 1
    try:
        if path.stat().st_size == 0:
            return "empty"
        source = _gif_frames if path.suffix.lower() == ".gif" else _ffmpeg_frames
        kept = []
        for i, frame in enumerate(source(path, needed)):
            if i % stride == 0:
                im = centre_crop_resize(to_rgb_or_gray(frame, channels), size)
                a = np.asarray(im, dtype=np.uint8)
                kept.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    except UndiffuseError:
        raise
    except Exception as e:  # decoders raise OSError, RuntimeError (ffmpeg), ValueError…
        return f"unreadable: {str(e).splitlines()[0][:60] if str(e) else type(e).__name__}"
    if len(kept) < frames:
        return f"too short: {len(kept)} of {frames} frames at stride {stride}"
    return np.stack(kept)


def load_clip_folder(path: str | os.PathLike, frames: int, size: int, channels: int = 1, stride: int = 1, *,
                     progress: bool | None = None) -> ClipData:
    """All clips under ``path`` as uint8 (N, frames, channels, size, size); sub-folders are classes.

    The summary of skipped files is logged as a warning and kept in ``ClipData.summary`` / ``.skipped``.
    """
    root = Path(path)
    if not root.is_dir():
        raise UndiffuseError(f"clip folder {root} does not exist or is not a folder")
    if channels not in (1, 3) or size < 1 or frames < 1 or stride < 1:
        raise UndiffuseError(f"need channels 1 or 3 and positive size, frames and stride; got channels={channels}, "
                             f"size={size}, frames={frames}, stride={stride}")
    files, relative = list_folder(root, CLIP_EXTENSIONS, "video clips", ", ".join(sorted(CLIP_EXTENSIONS)))
    class_names, class_index = folder_classes(relative)
    clips: list[np.ndarray] = []
    labels, skipped, summary = read_each(root, files, relative, class_index,
                                         lambda f: read_clip(f, frames, size, channels, stride),
                                         lambda clip, _: clips.append(clip), what="clips", unit="clip",
                                         progress=progress)
    return ClipData(torch.from_numpy(np.stack(clips)), torch.tensor(labels, dtype=torch.long), class_names,
                    skipped=skipped, summary=summary)
