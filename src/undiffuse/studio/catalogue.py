"""The models the studio offers: every shipped model and every trained run under --runs, read from their
metadata without loading weights; loaded on demand and kept in a small cache."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..config import Config, config_from_json
from ..errors import UndiffuseError
from ..model_files import resolve_model_path, shipped_models
from ..models import LoadedModel, load_model
from ..tasks.run import DENOISE_SAMPLER, DENOISE_STEPS
from .limits import LOADED_MODELS, ApiError
from .runs import find_runs

RUN_PREFIX = "run:"


@dataclass
class ModelEntry:
    """One model the page can pick: where it is and what its card says."""

    id: str                 # "fashion-mnist", or "run:" + the run's path under --runs
    kind: str               # "shipped" or "run"
    source: str             # what load_model takes: a shipped name or a run folder
    file: Path              # the weights file
    config: Config
    class_names: list[str]
    text: bool              # text-conditioned: takes a prompt
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def latent(self) -> bool:
        return self.config.space.kind == "latent"

    def tasks(self) -> list[str]:
        """The tasks this model can run in the studio."""
        if self.config.space.kind == "spectrogram" or self.config.data.frames:
            return ["generate"]  # sound tasks take a clip (`undiffuse denoise` / `inpaint`); video has none yet
        size = self.config.data.image_size
        tasks = ["generate", "inpaint", "edit"]
        if size % 2 == 0:
            tasks.append("upscale")
        if not self.latent:
            tasks.append("denoise")
        return tasks

    def card(self) -> dict[str, Any]:
        """What the page shows and the form defaults to (the card's [sample] section)."""
        s, d = self.config.sample, self.config.data
        return {"id": self.id, "kind": self.kind, "name": self.config.name, "classes": self.class_names,
                "text": self.text, "space": self.config.space.kind, "sound": self.config.space.kind == "spectrogram",
                "frames": self.config.data.frames,
                "image_size": d.image_size,
                "channels": d.channels, "backbone": self.config.model.backbone,
                "parameterization": self.config.diffusion.parameterization, "step": self.step,
                "tasks": self.tasks(),
                "defaults": {"sampler": s.sampler, "steps": s.steps, "grid": s.grid, "guidance": s.guidance,
                             "eps_scale": s.eps_scale, "guidance_parallel": s.guidance_parallel},
                "task_defaults": {"denoise": {"sampler": DENOISE_SAMPLER, "steps": DENOISE_STEPS}}}


def read_entry(model_id: str, kind: str, source: str) -> ModelEntry | None:
    """The entry of a model from its file's metadata (or config.json beside it); None if it is no image
    diffusion model (an autoencoder, a 2-D toy model, an unreadable file)."""
    try:
        path = resolve_model_path(source)
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("undiffuse", "{}"))
        if "config" not in meta and (path.parent / "config.json").is_file():
            meta = {**json.loads((path.parent / "config.json").read_text()), **meta}
        cfg = config_from_json(json.dumps(meta["config"]))
    except (UndiffuseError, OSError, ValueError, KeyError, TypeError):
        return None
    if cfg.model.backbone == "autoencoder" or meta.get("dim"):
        return None
    return ModelEntry(model_id, kind, source, path, cfg, list(meta.get("class_names", [])),
                      bool(meta.get("context_dim")), meta.get("step"), meta)


class Catalogue:
    """Shipped models (read once) and the runs under ``runs_dir`` (re-read when their files change)."""

    def __init__(self, runs_dir: Path | None):
        self.runs_dir = runs_dir
        self._shipped = [e for e in (read_entry(n, "shipped", n) for n in shipped_models()) if e is not None]
        self._runs: dict[str, tuple[float, ModelEntry | None]] = {}
        self._loaded: OrderedDict[tuple[str, float], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        """Every model, shipped first, then runs by id."""
        runs = []
        for run_id, folder in find_runs(self.runs_dir).items():
            try:
                file = resolve_model_path(folder)
                mtime = file.stat().st_mtime
            except (UndiffuseError, OSError):
                continue  # a run that has not written a model or checkpoint yet
            cached = self._runs.get(run_id)
            if cached is None or cached[0] != mtime:
                cached = (mtime, read_entry(RUN_PREFIX + run_id, "run", str(folder)))
                self._runs[run_id] = cached
            if cached[1] is not None:
                runs.append(cached[1])
        return [*self._shipped, *runs]

    def get(self, model_id: Any, what: str = "model") -> ModelEntry:
        """The entry called ``model_id``, or a 400 naming the known ones."""
        entries = self.entries()
        for entry in entries:
            if entry.id == model_id:
                return entry
        known = ", ".join(e.id for e in entries) or "none"
        raise ApiError(f"unknown {what} {str(model_id)[:80]!r}; known: {known}")

    def id_of_source(self, source: str) -> str | None:
        """The id of the model a PNG's "model" field names (a shipped name or a run folder), if offered here."""
        for entry in self.entries():
            if source in (entry.id, entry.source) or (entry.kind == "run" and _same_path(source, entry.source)):
                return entry.id
        return None

    def load(self, entry: ModelEntry) -> LoadedModel:
        """The loaded model (cached: the newest :data:`~.limits.LOADED_MODELS`; a rewritten file is reloaded)."""
        key = (entry.source, entry.file.stat().st_mtime if entry.file.exists() else 0.0)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        model = load_model(entry.source)
        with self._lock:
            self._loaded[key] = model
            while len(self._loaded) > LOADED_MODELS:
                self._loaded.popitem(last=False)
        return model


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False

