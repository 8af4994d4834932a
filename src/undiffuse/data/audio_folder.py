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
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UndiffuseError
from .audio import AUDIO_EXTENSIONS, AudioData, load_clip, stack_waves
from .folder import PROGRESS_MIN_FILES, folder_classes, list_folder, skip_summary

log = logging.getLogger(__name__)


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
    files, relative = list_folder(root, AUDIO_EXTENSIONS, "sound files", ", ".join(sorted(AUDIO_EXTENSIONS)))
    class_names, class_index = folder_classes(relative)

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
