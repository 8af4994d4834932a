"""Images out: PNG files and grids that carry their generation parameters in a text chunk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] → (H, W) or (H, W, 3) uint8."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    a = a.permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[2] == 1 else a


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """(N, C, H, W) → one (C, H', W') image, ``nrow`` per row (default √N), with white gaps."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i].detach().float().cpu()
    return grid


def _quote(value: Any) -> str:
    """A value as A1111 writes it: JSON-quoted where it holds a comma, a colon or a line break."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(params: dict[str, Any], size: tuple[int, int] | None = None) -> str:
    """The generation parameters in AUTOMATIC1111's layout, which other tools read (its infotext_utils parser):

        a prompt                                   (where there is one)
        Negative prompt: …                         (where there is one)
        Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 2.0, Seed: 3, Size: 32x32, Model: …, …

    The sampler and grid under the web UIs' names (:data:`~undiffuse.samplers.WEBUI_NAMES`; a grid without one keeps
    ours), ``size`` (width, height) as Size, then the other parameters as "Key: value" in their order; None is
    left out, a value with a comma or colon JSON-quoted."""
    from .samplers import WEBUI_GRIDS, webui_name

    rest = {k: v for k, v in params.items() if v is not None}
    lines = []
    prompt, negative = rest.pop("prompt", None), rest.pop("negative_prompt", None)
    if prompt:
        lines.append(str(prompt))
    if negative:
        lines.append(f"Negative prompt: {negative}")
    fields: dict[str, Any] = {}
    if "steps" in rest:
        fields["Steps"] = rest.pop("steps")
    if "sampler" in rest:
        fields["Sampler"] = webui_name(str(rest.pop("sampler")))
    if "grid" in rest:
        grid = str(rest.pop("grid"))
        fields["Schedule type"] = WEBUI_GRIDS.get(grid, grid)
    if "guidance" in rest:
        fields["CFG scale"] = rest.pop("guidance")
    if "seed" in rest:
        fields["Seed"] = rest.pop("seed")
    if size is not None:
        fields["Size"] = f"{size[0]}x{size[1]}"
    if "model" in rest:
        fields["Model"] = rest.pop("model")
    fields.update({k.replace("_", " ").capitalize(): v for k, v in rest.items()})
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def label_columns(pil: Image.Image, names: list[str], padding: int) -> Image.Image:
    """A white strip above a grid with ``names[i]`` centred over column i (columns of equal width)."""
    font = ImageFont.load_default(size=11)
    strip = 16
    out = Image.new(pil.mode, (pil.width, pil.height + strip), "white")
    out.paste(pil, (0, strip))
    draw = ImageDraw.Draw(out)
    cell = (pil.width - padding) / len(names)
    for i, name in enumerate(names):
        draw.text((padding + cell * (i + 0.5), strip - 2), name, fill="black", font=font, anchor="ms")
    return out


def save_png(path: str | Path, image: Tensor, params: dict[str, Any] | None = None, scale: int = 1,
             column_labels: list[str] | None = None, padding: int = 2) -> Path:
    """Write a (C, H, W) image in [-1, 1]; ``params`` go into "parameters" (A1111's text, :func:`infotext`, with the
    image's own size before scaling) and "undiffuse" (JSON, what ``undiffuse sample --from-png`` reads).

    ``column_labels`` names the columns of a grid made by :func:`make_grid` with that ``padding``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(to_uint8(image))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    if column_labels:
        pil = label_columns(pil, column_labels, padding * scale)
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("parameters", infotext(params, (image.shape[-1], image.shape[-2])))
        info.add_text("undiffuse", json.dumps(params))
    pil.save(path, pnginfo=info)
    return path


def read_params(path: str | Path) -> dict[str, Any]:
    """The JSON parameters stored by :func:`save_png` ({} if none)."""
    with Image.open(path) as im:
        text = im.text.get("undiffuse") if hasattr(im, "text") else None
    return json.loads(text) if text else {}
