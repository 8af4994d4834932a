"""``undiffuse export``: a trained model in another tool's format (registered in :mod:`undiffuse.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UndiffuseError

FORMATS = ("diffusers",)


def export(
    model: Annotated[str, typer.Argument(help="A run folder, a checkpoint file, or a shipped model's name (its EMA "
                                         "weights are exported).")],
    out: Annotated[Path, typer.Argument(help="The folder to write (new, or empty).")],
    to: Annotated[str, typer.Option("--to", help="The format: diffusers (a DDPMPipeline folder: unet/ as a "
                                    "UNet2DModel in safetensors, scheduler/ of the same chain).")],
) -> None:
    """Write a trained model in another tool's format: `undiffuse export RUN --to diffusers OUT` (where the U-Net
    maps onto diffusers' UNet2DModel; otherwise one line says what does not)."""
    if to not in FORMATS:
        raise UndiffuseError(f"unknown export format {to!r}; known: {', '.join(FORMATS)}")
    from .diffusers_export import export_diffusers

    path = export_diffusers(model, out)
    typer.echo(f"wrote {path} (a diffusers DDPMPipeline: DDPMPipeline.from_pretrained({str(path)!r}); undiffuse "
               f"sample {path} reads it back)")
