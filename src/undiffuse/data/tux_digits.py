"""Real recorded spoken digits from Tux Paint (GPL-2): the "math" stamps of Debian's ``tuxpaint-stamps-default``.

/usr/share/tuxpaint/stamps/symbols/math/N.ogg is a US-English recording of the digit N (11 025 Hz) and
N_en_GB.ogg a British one (44 100 Hz), for N = 0–9: twenty clips of two real speakers that no synthetic
training set contains: real, unseen audio for checks. ``languages`` adds the others (N_de.ogg, N_fr.ogg, …),
where they exist for a digit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UndiffuseError
from .audio import AudioData, load_clip, stack_waves
from .spoken_digits import WORDS

MATH_STAMPS = Path("/usr/share/tuxpaint/stamps/symbols/math")
ENGLISH = ("en", "en_GB")
ATTRIBUTION = "Tux Paint stamp sounds (New Breed Software and contributors, GPL-2), Debian tuxpaint-stamps-default"


def load_tux_digits(rate: int = 8000, length: int | None = 8192, languages: tuple[str, ...] = ENGLISH,
                    root: str | os.PathLike | None = None) -> AudioData:
    """The spoken digits 0–9 of each language ("en" is N.ogg, others N_<lang>.ogg), prepared like every clip."""
    folder = Path(root) if root else MATH_STAMPS
    if not folder.is_dir():
        raise UndiffuseError(f"no Tux Paint digit recordings at {folder}: apt-get install tuxpaint-stamps-default")
    clips: list[np.ndarray] = []
    labels, voices, sources, skipped = [], [], [], []
    for lang in languages:
        for digit in range(10):
            path = folder / (f"{digit}.ogg" if lang == "en" else f"{digit}_{lang}.ogg")
            if not path.is_file():
                continue
            clip = load_clip(path, rate, length)
            if isinstance(clip, str):
                skipped.append((path.name, clip))
                continue
            clips.append(clip)
            labels.append(digit)
            voices.append(f"tuxpaint:{lang}")
            sources.append(str(path))
    if not clips:
        raise UndiffuseError(f"no readable digit recordings for {', '.join(languages)} in {folder}")
    return AudioData(stack_waves(clips), torch.tensor(labels, dtype=torch.long), list(WORDS), rate,
                     voices, sources, skipped)
