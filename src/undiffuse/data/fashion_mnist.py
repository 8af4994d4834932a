"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the IDX files of the Debian package.

``apt-get install dataset-fashion-mnist`` puts the four gzip IDX files in
/usr/share/datasets/fashion-mnist; another folder can be given as an argument or in the
environment variable UNDIFFUSE_FASHION_MNIST. The IDX format (LeCun et al., the MNIST page):
a big-endian header — two zero bytes, a type code, the number of dimensions, one uint32 per
dimension — then the array in C order.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import UndiffuseError
from .images import ImageData, pad_images, resize_images

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "UNDIFFUSE_FASHION_MNIST"
APT_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000)}
# IDX type code -> big-endian NumPy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed when its name ends in .gz) into an array of its shape and type."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise UndiffuseError(f"missing IDX file {path}") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UndiffuseError(f"corrupt IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UndiffuseError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UndiffuseError(f"corrupt IDX file {path}: header of {ndim} dimensions is cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise UndiffuseError(f"corrupt IDX file {path}: {len(raw)} bytes, the header {shape} implies {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder with the IDX files: the argument, else $UNDIFFUSE_FASHION_MNIST, else the Debian path."""
    return Path(data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise UndiffuseError(f"Fashion-MNIST file {folder / (stem + '.gz')} not found: install it with "
                         f"`apt-get install {APT_PACKAGE}` or point {ENV_VAR} at a folder with the IDX files")


def load_fashion_mnist(split: Literal["train", "test"] = "train", size: int = 32,
                       fit: Literal["auto", "pad", "resize"] = "auto", data_dir: str | os.PathLike | None = None,
                       limit: int | None = None) -> ImageData:
    """Fashion-MNIST as (N, 1, size, size) uint8 with its 10 labels; train has 60 000 images, test 10 000.

    ``fit`` turns the 28×28 originals into size×size: "pad" adds a background border (0, which is
    -1 after scaling), "resize" resamples; "auto" pads when 28 ≤ size ≤ 32 and resizes otherwise.
    ``limit`` keeps the first n images.
    """
    if split not in FILES:
        raise UndiffuseError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    if fit not in ("auto", "pad", "resize"):
        raise UndiffuseError(f"unknown fit {fit!r}; choose 'auto', 'pad' or 'resize'")
    if not isinstance(size, int) or size < 1:
        raise UndiffuseError(f"size must be a positive integer, got {size!r}")
    folder = fashion_mnist_dir(data_dir)
    image_stem, label_stem, n = FILES[split]
    image_file, label_file = _find(folder, image_stem), _find(folder, label_stem)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.shape != (n, 28, 28):
        raise UndiffuseError(f"corrupt Fashion-MNIST file {image_file}: expected uint8 ({n}, 28, 28), "
                             f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (n,) or labels.max() >= len(CLASS_NAMES):
        raise UndiffuseError(f"corrupt Fashion-MNIST file {label_file}: expected {n} labels 0–9, "
                             f"got {labels.dtype} {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images)[:, None]  # (N, 1, 28, 28)
    if fit == "pad" or (fit == "auto" and 28 <= size <= 32):
        x = pad_images(x, size, value=0)
    else:
        x = resize_images(x, size)
    return ImageData(x, torch.from_numpy(labels.astype(np.int64)), list(CLASS_NAMES))
