"""Video files that carry their parameters: an endlessly looping GIF (Pillow; the JSON in its comment extension),
an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg; the JSON in its ``comment`` metadata) and a PNG strip of the frames
(its text chunks, as every PNG undiffuse writes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from .errors import UndiffuseError
from .images import to_uint8

SCALE = 4   # clips are small: files show them enlarged ×4, pixels kept sharp (nearest neighbour)
FPS = 8


def _frames(clip: Tensor, scale: int) -> list[np.ndarray]:
    """(F, C, H, W) in [-1, 1] → F RGB uint8 arrays (H·scale, W·scale, 3)."""
    out = []
    for frame in clip:
        a = to_uint8(frame)
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
        out.append(np.stack([a] * 3, axis=-1) if a.ndim == 2 else a)
    return out


def write_gif(path: str | os.PathLike, clip: Tensor, params: dict[str, Any] | None = None, fps: int = FPS,
              scale: int = SCALE) -> Path:
    """A looping GIF of a clip (F, C, H, W); ``params`` as JSON in the comment extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pils = [Image.fromarray(a) for a in _frames(clip, scale)]
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=round(1000 / fps), loop=0,
                 comment=json.dumps(params or {}).encode())
    return path


def read_gif_params(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON parameters of a GIF written by :func:`write_gif` ({} if none)."""
    with Image.open(path) as im:
        text = im.info.get("comment", b"")
    try:
        return json.loads(text) if text else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def write_mp4(path: str | os.PathLike, clip: Tensor, params: dict[str, Any] | None = None, fps: int = FPS,
              scale: int = SCALE) -> Path:
    """An H.264 MP4 (yuv420p, plays everywhere) of a clip; ``params`` as JSON in the ``comment`` metadata."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UndiffuseError("writing MP4 needs imageio-ffmpeg: pip install 'undiffuse[video]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(clip, scale)
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=1, quality=8, ffmpeg_log_level="error",
                                         output_params=["-metadata", f"comment={json.dumps(params or {})}"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def read_mp4(path: str | os.PathLike) -> tuple[list[np.ndarray], dict[str, Any]]:
    """An MP4's frames (RGB uint8) and its JSON ``comment`` metadata (read with the bundled ffmpeg)."""
    import subprocess

    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path), "-f", "ffmetadata", "-"],
                           capture_output=True, text=True, check=False)
    comment = next((line[len("comment="):] for line in probe.stdout.splitlines() if line.startswith("comment=")), "")
    try:
        params = json.loads(comment.replace("\\=", "=").replace("\\;", ";").replace("\\#", "#")) if comment else {}
    except ValueError:
        params = {}
    return frames, params
