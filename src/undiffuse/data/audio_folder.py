"""A folder of sound clips (WAV, FLAC, OGG, MP3, AIFF) as AudioData, as :mod:`.folder` does for images.

Each top-level sub-folder is a class (sorted names; deeper folders belong to their top-level one);
files directly in the root are unlabeled (-1). Every clip is mixed down to mono, resampled to ``rate``,
trimmed of silence, peak-normalised and centred in ``length`` samples (:func:`.audio.prepare_clip`).
Empty, unreadable and silent files are skipped and named in one logged line: never a traceback,
never a silent loss.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UndiffuseError
from .audio import AUDIO_EXTENSIONS, AudioData, load_clip, stack_waves
from .folder import PROGRESS_MIN_FILES, skip_summary

log = logging.getLogger(__name__)


def _list_files(root: Path) -> tuple[list[Path], Counter]:
    """Sound files under root, sorted; and a count of other files by extension (hidden ones ignored)."""
    files, others = [], Counter()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext in AUDIO_EXTENSIONS:
                files.append(Path(folder, name))
            else:
                others[ext or "(no extension)"] += 1
    return files, others


def load_audio_folder(path: str | os.PathLike, rate: int = 8000, length: int | None = 8192, *,
                      progress: bool | None = None) -> AudioData:
    """All clips under ``path`` as (N, length) float32 waves at ``rate`` Hz; sub-folders are classes.

    ``length=None`` keeps each clip's own length, which only works when they all agree (else an error).
    The summary of skipped files is logged as a warning and kept in ``AudioData.summary`` / ``.skipped``.
    """
    root = Path(path)
    if not root.is_dir():
        raise UndiffuseError(f"sound folder {root} does not exist or is not a folder")
    if not isinstance(rate, int) or rate < 1000:
        raise UndiffuseError(f"rate must be an integer of at least 1000 Hz, got {rate!r}")
    files, others = _list_files(root)
    if others:
        log.info("%s: ignored %d files that are not sound clips (%s)", root, sum(others.values()),
                 ", ".join(f"{ext} ×{n}" for ext, n in others.most_common(5)))
    if not files:
        raise UndiffuseError(f"no sound files in {root} (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    relative = [f.relative_to(root) for f in files]
    class_names = sorted({r.parts[0] for r in relative if len(r.parts) > 1})
    class_index = {name: i for i, name in enumerate(class_names)}

    clips, labels, sources, skipped = [], [], [], []
    show = progress if progress is not None else len(files) >= PROGRESS_MIN_FILES
    for file, rel in zip(tqdm(files, desc=f"reading {root.name}", unit="clip", disable=not show), relative,
                         strict=True):
        clip = load_clip(file, rate, length)
        if isinstance(clip, str):
            skipped.append((rel.as_posix(), clip))
            continue
        clips.append(clip)
        labels.append(class_index[rel.parts[0]] if len(rel.parts) > 1 else -1)
        sources.append(rel.as_posix())

    summary = skip_summary(skipped, len(files))
    if skipped:
        log.warning("%s: %s", root, summary)
    if not clips:
        raise UndiffuseError(f"no readable sound clips in {root}: {summary}")
    if len({len(c) for c in clips}) > 1:
        raise UndiffuseError(f"the clips in {root} differ in length: give a length (samples) to pad or crop them to")
    return AudioData(stack_waves(clips), torch.tensor(labels, dtype=torch.long), class_names, rate, [], sources,
                     skipped, summary)
