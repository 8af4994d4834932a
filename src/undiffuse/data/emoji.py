"""Captioned emoji: Twemoji's 64×64 PNGs (CC-BY 4.0, © Twitter, Inc. and other contributors) with the
names, short names, categories and sub-categories of the npm package ``emoji-datasource-twitter``.

Every emoji and every skin-tone variant is one image, flattened onto white, with several captions
("red heart", "heart", "red heart, a smileys & emotion emoji: heart"); a skin-tone variant names its
tone ("waving hand: medium-dark skin tone"). The setup command fetches the package with ``npm pack``
into ``$UNDIFFUSE_DATA`` (default ``~/.cache/undiffuse``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import UndiffuseError
from .folder import read_image

PACKAGE = "emoji-datasource-twitter"
VERSION = "16.0.0"
TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
         "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
ATTRIBUTION = ("Twemoji graphics © Twitter, Inc. and other contributors, CC-BY 4.0 "
               "(https://creativecommons.org/licenses/by/4.0/), via the npm package emoji-datasource-twitter")


def data_root() -> Path:
    return Path(os.environ.get("UNDIFFUSE_DATA") or Path.home() / ".cache" / "undiffuse")


def emoji_dir(root: str | os.PathLike | None = None) -> Path:
    """The unpacked package (with emoji.json and img/twitter/64/)."""
    return Path(root) if root else data_root() / f"{PACKAGE}-{VERSION}"


def fetch_emoji(root: str | os.PathLike | None = None) -> Path:
    """Fetch and unpack the npm package (only emoji.json and the 64-px PNGs) unless it is there already."""
    dest = emoji_dir(root)
    if (dest / "emoji.json").is_file():
        return dest
    if shutil.which("npm") is None:
        raise UndiffuseError(f"fetching the emoji needs npm (apt-get install npm), or set UNDIFFUSE_DATA to a "
                             f"folder holding {PACKAGE}-{VERSION}")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, capture_output=True,
                              text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if done.returncode != 0 or tgz is None:
            raise UndiffuseError(f"npm pack {PACKAGE}@{VERSION} failed: {done.stderr.strip()[:200]}")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tgz) as tar:
            wanted = [m for m in tar.getmembers() if m.isfile() and
                      (m.name in ("package/emoji.json", "package/LICENSE", "package/README.md")
                       or m.name.startswith("package/img/twitter/64/"))]
            tar.extractall(staging, members=wanted, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / "package"), dest)
    return dest


def _words(text: str) -> str:
    return text.replace("_", " ").replace("-", " ").strip().lower()


def captions_for(entry: dict, tone: str | None = None) -> list[str]:
    """Caption variants of one emoji entry of emoji.json (and a skin tone key such as "1F3FD")."""
    name = _words(entry.get("name") or entry.get("short_name") or "emoji")
    shorts = [_words(s) for s in entry.get("short_names", [])]
    category = _words(entry.get("category", ""))
    sub = _words(entry.get("subcategory", ""))
    tone_text = ", ".join(TONES.get(t, "") for t in tone.split("-")) if tone else ""
    suffix = f": {tone_text}" if tone_text else ""
    out = [name + suffix]
    out += [s + suffix for s in shorts if s != name]
    if category:
        out.append(f"{name}{suffix}, a {category} emoji" + (f": {sub}" if sub else ""))
    return list(dict.fromkeys(out))


@dataclass
class CaptionedImages:
    """uint8 images (N, C, S, S), each with caption variants (the first is the main one)."""

    images: Tensor
    captions: list[list[str]]
    categories: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    attribution: str = ATTRIBUTION

    def __len__(self) -> int:
        return len(self.images)


def load_emoji(size: int = 32, channels: int = 3, root: str | os.PathLike | None = None,
               skin_tones: bool = True, limit: int | None = None) -> CaptionedImages:
    """Twemoji with captions, resized to size×size (Lanczos) on white. Unreadable PNGs are skipped and named."""
    folder = emoji_dir(root)
    meta_path = folder / "emoji.json"
    if not meta_path.is_file():
        raise UndiffuseError(f"no emoji at {folder}: run scripts/setup.sh (it fetches {PACKAGE} with npm) "
                             "or set UNDIFFUSE_DATA")
    entries = json.loads(meta_path.read_text())
    jobs = []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        if e.get("has_img_twitter") and e.get("image"):
            jobs.append((e["image"], captions_for(e), e.get("category", "")))
        for tone, v in (e.get("skin_variations") or {}).items() if skin_tones else []:
            if v.get("has_img_twitter") and v.get("image"):
                jobs.append((v["image"], captions_for(e, tone), e.get("category", "")))
    jobs = jobs[:limit] if limit else jobs
    images, captions, categories, skipped = [], [], [], []
    for name, caps, cat in jobs:
        arr = read_image(folder / "img" / "twitter" / "64" / name, size, channels)
        if isinstance(arr, str):
            skipped.append((name, arr))
            continue
        images.append(arr)                                       # (C, S, S)
        captions.append(caps)
        categories.append(cat)
    if not images:
        raise UndiffuseError(f"no readable emoji images under {folder}")
    stacked = torch.from_numpy(np.stack(images))
    return CaptionedImages(stacked, captions, categories, skipped)


