"""scikit-learn's handwritten digits (UCI optdigits test set): 1 797 images 8×8 — a data set for tests."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UndiffuseError
from .images import ImageData, resize_images


def load_digits_data(size: int = 8) -> ImageData:
    """The digits 0–9 as (1797, 1, size, size) uint8; the 17 gray levels 0–16 map to 0–255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UndiffuseError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    if not isinstance(size, int) or size < 1:
        raise UndiffuseError(f"size must be a positive integer, got {size!r}")
    bunch = load_digits()  # shipped inside the scikit-learn package: no download
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0–16 -> 0–255
    x = resize_images(torch.from_numpy(images)[:, None], size)
    return ImageData(x, torch.from_numpy(bunch.target.astype(np.int64)), [str(d) for d in range(10)])
