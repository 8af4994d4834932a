"""Where trained models are found: a run folder, a checkpoint or model file, or the name of a shipped model."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UndiffuseError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def shipped_models() -> list[str]:
    """Names of the diffusion models shipped in the package (not the evaluation classifiers)."""
    names = []
    for d in sorted(PRETRAINED_DIR.iterdir()) if PRETRAINED_DIR.is_dir() else []:
        side = d / "config.json"
        if (d / "model.safetensors").is_file() and side.is_file() and "diffusion" in \
                json.loads(side.read_text()).get("config", {}):
            names.append(d.name)
    return names


def resolve_model_path(model: str | Path) -> Path:
    """A run folder, a checkpoint / model file, or the name of a shipped model → a file to load."""
    p = Path(model).expanduser()
    if p.is_dir():
        for candidate in (p / "model.safetensors", p / "checkpoints" / "latest.safetensors"):
            if candidate.is_file():
                return candidate
        raise UndiffuseError(f"{p} holds no model.safetensors or checkpoints/latest.safetensors")
    if p.is_file():
        return p
    shipped = PRETRAINED_DIR / str(model) / "model.safetensors"
    if shipped.is_file():
        return shipped
    names = shipped_models()
    raise UndiffuseError(f"no model {str(model)!r}: not a run folder, a file, or a shipped model "
                         f"(shipped: {', '.join(names) or 'none'})")
