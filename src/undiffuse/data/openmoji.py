"""Captioned emoji from OpenMoji: 4 495 colour SVGs with Unicode annotations, tags, groups and sub-groups.

All emojis designed by OpenMoji (https://openmoji.org/), the open-source emoji and icon project.
Licence of the graphics: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); they come
from the npm package ``openmoji`` (its ``color/svg/`` and ``data/openmoji.json``), which the setup
command fetches with ``npm pack`` into ``$UNDIFFUSE_DATA`` (default ``~/.cache/undiffuse``).

Every emoji and every skin-tone variant is one image, rasterised by resvg at the model's size and
flattened onto white, with caption variants: the annotation ("grinning face"; a variant names its
tone: "waving hand: light skin tone") and the annotation with tags, group and sub-group
("grinning face: smile, happy, cheerful, cheery; smileys-emotion, face-smiling"), the OpenMoji tags first.
Rasterised images are cached beside the SVGs as one uncompressed .npz per size (read without
pickle), so only the first load renders. SVGs that do not render are skipped and counted.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UndiffuseError
from .emoji import CaptionedImages, data_root
from .folder import skip_summary, to_rgb_or_gray

log = logging.getLogger(__name__)

PACKAGE = "openmoji"
VERSION = "17.0.0"
MAX_TAGS = 4  # tags per caption (of up to 16): median 23 tokens; only 150 long skin-tone captions pass
#               the text encoder's 32 and lose their group to truncation (with 6: 784 would)
ATTRIBUTION = ("All emojis designed by OpenMoji (https://openmoji.org/), the open-source emoji and icon project. "
               "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/), "
               "via the npm package openmoji")


def openmoji_dir(root: str | os.PathLike | None = None) -> Path:
    """The unpacked package (with data/openmoji.json and color/svg/)."""
    return Path(root) if root else data_root() / f"{PACKAGE}-{VERSION}"


def fetch_openmoji(root: str | os.PathLike | None = None) -> Path:
    """Fetch and unpack the npm package (only openmoji.json, the colour SVGs and the licence) unless it is there."""
    dest = openmoji_dir(root)
    if (dest / "data" / "openmoji.json").is_file():
        return dest
    if dest.exists():
        raise UndiffuseError(f"{dest} exists but holds no data/openmoji.json: remove it and fetch again")
    if shutil.which("npm") is None:
        raise UndiffuseError(f"fetching OpenMoji needs npm (apt-get install npm), or set UNDIFFUSE_DATA to a "
                             f"folder holding {PACKAGE}-{VERSION}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--loglevel=error"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise UndiffuseError(f"npm pack {PACKAGE}@{VERSION} timed out (is the npm registry reachable?)") from None
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if done.returncode != 0 or tgz is None:
            raise UndiffuseError(f"npm pack {PACKAGE}@{VERSION} failed (is the npm registry reachable?): "
                                 f"{_npm_reason(done)}")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tgz) as tar:
            wanted = [m for m in tar.getmembers() if m.isfile() and
                      (m.name in ("package/data/openmoji.json", "package/LICENSE.txt", "package/package.json")
                       or (m.name.startswith("package/color/svg/") and m.name.endswith(".svg")))]
            tar.extractall(staging, members=wanted, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / "package"), dest)
    return dest


def _npm_reason(done: subprocess.CompletedProcess) -> str:
    """The telling line of npm's error log ("FetchError: request to … failed, reason: …"), shortened."""
    lines = [line.removeprefix("npm error").strip() for line in done.stderr.splitlines()
             if line.startswith("npm error") and line.removeprefix("npm error").strip()]
    telling = [line for line in lines if "Error" in line or "404" in line] or lines
    return telling[0][:200] if telling else f"exit status {done.returncode}"


def _split(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def captions_for(entry: dict, base: dict | None = None) -> list[str]:
    """Caption variants of one entry of openmoji.json; a skin-tone variant takes its tags from ``base``."""
    annotation = entry["annotation"].strip()
    source = base if base is not None else entry
    tags = list(dict.fromkeys(_split(source.get("openmoji_tags", "")) + _split(source.get("tags", ""))))
    name = annotation.replace(": ", ", ", 1)  # "waving hand, light skin tone: hand, wave; …" (one colon)
    groups = ", ".join(g for g in (entry.get("group", ""), entry.get("subgroups", "")) if g)
    full = name + (": " + ", ".join(tags[:MAX_TAGS]) if tags else "") + (f"; {groups}" if groups else "")
    return list(dict.fromkeys([annotation, full]))


def render_svg(path: Path, size: int, channels: int) -> np.ndarray | str:
    """One SVG rasterised at size×size on white: uint8 (C, size, size), or the reason it was skipped."""
    import resvg_py  # imported here: only OpenMoji needs it

    if not path.is_file():
        return "missing"
    try:
        if path.stat().st_size == 0:
            return "empty"
        png = resvg_py.svg_to_bytes(svg_path=str(path), width=size, height=size, skip_system_fonts=True)
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            if im.size != (size, size):
                return f"not square: {im.width}×{im.height}"
            im = to_rgb_or_gray(im, channels)  # alpha onto white
    except Exception as e:  # resvg raises ValueError for bad SVG; Pillow OSError for a bad PNG
        return f"unreadable: {str(e).splitlines()[0][:60] if str(e) else type(e).__name__}"
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _cache_path(folder: Path, size: int, channels: int) -> Path:
    import resvg_py

    mode = "rgb" if channels == 3 else "gray"  # the renderer's version: another resvg may draw other pixels
    return folder / "raster" / f"{size}px-{mode}-resvg{resvg_py.__resvg_version__}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["hexcodes"].tolist(), z["images"], strict=True))
    except FileNotFoundError:
        return {}
    except Exception as e:  # a torn or foreign file: render again
        log.warning("%s: ignoring the raster cache (%s)", path, str(e).splitlines()[0][:80] if str(e) else e)
        return {}


def _write_cache(path: Path, rendered: dict[str, np.ndarray]) -> None:
    """All rendered images in one .npz, written atomically; a read-only data folder only costs speed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, hexcodes=np.array(list(rendered), dtype=str), images=np.stack(list(rendered.values())))
        os.chmod(tmp, 0o644)  # a temporary file is private; the cache is data like the SVGs beside it
        os.replace(tmp, path)
    except OSError as e:
        log.warning("%s: could not write the raster cache (%s)", path, e)
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def load_openmoji(size: int = 32, channels: int = 3, root: str | os.PathLike | None = None,
                  skin_tones: bool = True, limit: int | None = None, cache: bool = True) -> CaptionedImages:
    """OpenMoji with captions, rendered at size×size on white, in the package's order (variants after their base).

    ``limit`` keeps the first n entries. SVGs that do not render are skipped, counted and logged.
    """
    if channels not in (1, 3):
        raise UndiffuseError(f"channels must be 1 or 3, got {channels}")
    folder = openmoji_dir(root)
    meta_path = folder / "data" / "openmoji.json"
    if not meta_path.is_file():
        raise UndiffuseError(f"no OpenMoji at {folder}: run scripts/setup.sh (it fetches {PACKAGE} with npm) "
                             "or set UNDIFFUSE_DATA")
    entries = json.loads(meta_path.read_text(encoding="utf-8"))  # Unicode order, OpenMoji's extras last
    by_hex = {e["hexcode"]: e for e in entries}
    jobs = [e for e in entries if skin_tones or not e.get("skintone")]
    jobs = jobs[:limit] if limit else jobs

    cache_path = _cache_path(folder, size, channels)
    known = _read_cache(cache_path) if cache else {}
    new = 0
    images, captions, categories, skipped = [], [], [], []
    for e in jobs:
        hexcode = e["hexcode"]
        arr = known.get(hexcode)
        if arr is None or arr.shape != (channels, size, size):
            arr = render_svg(folder / "color" / "svg" / f"{hexcode}.svg", size, channels)
            if isinstance(arr, str):
                skipped.append((f"{hexcode}.svg", arr))
                continue
            known[hexcode], new = arr, new + 1
        images.append(arr)                                                      # (C, S, S)
        captions.append(captions_for(e, by_hex.get(e.get("skintone_base_hexcode") or "")))
        categories.append(e.get("group", ""))
    if cache and new:
        _write_cache(cache_path, known)
    if skipped:
        log.warning("%s: %s", folder, skip_summary(skipped, len(jobs)))
    if not images:
        raise UndiffuseError(f"no OpenMoji SVG under {folder} could be rendered")
    return CaptionedImages(torch.from_numpy(np.stack(images)), captions, categories, skipped, ATTRIBUTION)


def concat_captioned(parts: list[CaptionedImages]) -> CaptionedImages:
    """Several captioned sets as one (same size and channels), their attributions joined."""
    return CaptionedImages(torch.cat([p.images for p in parts]), [c for p in parts for c in p.captions],
                           [c for p in parts for c in p.categories], [s for p in parts for s in p.skipped],
                           "; ".join(dict.fromkeys(p.attribution for p in parts)))


def load_emoji_and_openmoji(size: int = 32, channels: int = 3, limit: int | None = None) -> CaptionedImages:
    """Twemoji then OpenMoji, one set; ``limit`` n keeps n − n//2 Twemoji and n//2 OpenMoji."""
    from .emoji import load_emoji

    first, second = (limit - limit // 2, limit // 2) if limit else (None, None)
    parts = [load_emoji(size=size, channels=channels, limit=first)]
    if second != 0:
        parts.append(load_openmoji(size=size, channels=channels, limit=second))
    return concat_captioned(parts)
