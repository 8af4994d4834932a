"""The gallery on disk: one folder per finished job under OUT/history/, holding its PNGs (or a sound model's
WAVs and spectrogram grid; each carrying its parameters), its inputs, and record.json. It survives a restart;
nothing is written or served outside it."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .limits import ApiError

ID_RE = re.compile(r"^\d{8}-\d{6}-\d{3}-[0-9a-f]{6}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}\.(png|wav|gif|mp4)$")
GRIDS = ("grid.png", "spectrograms.png")  # the picture of all samples: of images, of sounds
ALL_SOUNDS = "all.wav"
RECORD = "record.json"
INPUTS = ("input.png", "mask.png")


class History:
    """Job folders under ``root``/history; a folder without a record (a job that never finished, or a crash)
    is removed at start."""

    def __init__(self, root: Path):
        self.root = (Path(root) / "history").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        for folder in self.root.iterdir():
            if ID_RE.match(folder.name) and folder.is_dir() and not (folder / RECORD).is_file():
                shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def new_id() -> str:
        """A fresh job id: the UTC time to the millisecond and a random tail, so ids sort by time."""
        now = time.time()
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now % 1 * 1000):03d}-" + \
            secrets.token_hex(3)

    def folder(self, job_id: str, create: bool = False) -> Path:
        """The folder of job ``job_id``: only ids this store makes, always inside the store."""
        if not isinstance(job_id, str) or not ID_RE.match(job_id):
            raise ApiError(f"no history entry {str(job_id)[:40]!r}", 404)
        path = self.root / job_id
        if create:
            path.mkdir(exist_ok=False)
        if not path.resolve().is_relative_to(self.root):
            raise ApiError(f"no history entry {job_id!r}", 404)
        return path

    def file(self, job_id: str, name: str) -> Path:
        """A PNG or WAV of a history entry (or its input); refused unless it is a plain file inside its folder."""
        folder = self.folder(job_id)
        if not NAME_RE.match(name):
            raise ApiError(f"no file {name[:60]!r}", 404)
        path = folder / name
        if not path.is_file() or path.is_symlink() or not path.resolve().is_relative_to(self.root):
            raise ApiError(f"no file {name[:60]!r} in {job_id}", 404)
        return path

    def save_record(self, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write record.json atomically (temporary file + rename): an entry is in the history only once whole."""
        folder = self.folder(job_id)
        images = sorted(p.name for p in folder.glob("*.png") if p.name not in INPUTS and p.name not in GRIDS)
        sounds = sorted(p.name for p in folder.glob("*.wav") if p.name != ALL_SOUNDS)
        videos = sorted(p.name for p in folder.glob("*.gif"))  # a video model's clips (an MP4 beside each)
        record = {**record, "id": job_id, "images": images, "sounds": sounds, "videos": videos,
                  "all_sounds": ALL_SOUNDS if (folder / ALL_SOUNDS).is_file() else None,
                  "grid": next((g for g in GRIDS if (folder / g).is_file()), None),
                  "inputs": [n for n in INPUTS if (folder / n).is_file()]}
        tmp = folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, folder / RECORD)
        return self.decorate(record)

    def decorate(self, record: dict[str, Any]) -> dict[str, Any]:
        """A record with the URLs of its files."""
        base = f"/files/history/{record['id']}/"
        return {**record, "urls": {"grid": base + record["grid"] if record.get("grid") else None,
                                   "images": [base + n for n in record.get("images", [])],
                                   "sounds": [base + n for n in record.get("sounds", [])],
                                   "videos": [base + n for n in record.get("videos", [])],
                                   "all_sounds": base + record["all_sounds"] if record.get("all_sounds") else None,
                                   "inputs": {n.removesuffix(".png"): base + n for n in record.get("inputs", [])}}}

    def _read(self, folder: Path) -> dict[str, Any] | None:
        path = folder / RECORD
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            cached = self._cache.get(folder.name)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        with self._lock:
            self._cache[folder.name] = (mtime, record)
        return record

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """The newest entries first: (a page of them, how many there are)."""
        names = sorted((p.name for p in self.root.iterdir() if ID_RE.match(p.name)), reverse=True)
        records = [r for r in (self._read(self.root / n) for n in names) if r is not None]
        return [self.decorate(r) for r in records[offset:offset + limit]], len(records)

    def get(self, job_id: str) -> dict[str, Any]:
        record = self._read(self.folder(job_id))
        if record is None:
            raise ApiError(f"no history entry {job_id!r}", 404)
        return self.decorate(record)

    def delete(self, job_id: str) -> None:
        folder = self.folder(job_id)
        if not (folder / RECORD).is_file():
            raise ApiError(f"no history entry {job_id!r}", 404)
        self.discard(job_id)

    def discard(self, job_id: str) -> None:
        """Remove a job's folder (a failed or cancelled job leaves nothing behind)."""
        folder = self.folder(job_id)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        with self._lock:
            self._cache.pop(job_id, None)
