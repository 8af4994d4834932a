"""The training dashboard's data: each run's config, its curves from log.jsonl (read incrementally), its latest
sample grids, and the command that resumes it."""

from __future__ import annotations

import json
import math
import shlex
import threading
import time
from pathlib import Path
from typing import Any

from ..config import load_config, to_dict
from ..errors import UndiffuseError
from .limits import MAX_LOG_POINTS, ApiError
from .runs import find_runs

CURVES = ("loss", "lr", "img_per_s", "grad_norm")
LIVE_SECONDS = 120  # a log written this recently (or within 5 of its intervals), short of the end: training
SAMPLES_SHOWN = 6


class LogReader:
    """log.jsonl of many runs, each read from where it was left: a poll reads only the new lines."""

    def __init__(self):
        self._state: dict[Path, tuple[int, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def records(self, path: Path) -> list[dict[str, Any]]:
        """The complete lines of the log that carry a loss (a half-written last line waits for the next poll)."""
        try:
            size = path.stat().st_size
        except OSError:
            return []
        with self._lock:
            offset, rows = self._state.get(path, (0, []))
            if size < offset:  # the log was replaced: start again
                offset, rows = 0, []
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                end = chunk.rfind(b"\n") + 1
                new = []
                for line in chunk[:end].splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and isinstance(row.get("loss"), int | float):
                        new.append({k: row.get(k) for k in ("step", "seconds", *CURVES)})  # only what is drawn
                rows = rows + new  # a new list: a reader holding the old one is not disturbed
                offset += end
            self._state[path] = (offset, rows)
            return rows


def curves(rows: list[dict[str, Any]], max_points: int = MAX_LOG_POINTS) -> dict[str, list]:
    """{"step": […], "loss": […], …}, thinned to at most ``max_points`` (every k-th row, always the last)."""
    stride = max(1, math.ceil(len(rows) / max_points))
    picked = rows[::stride]
    if rows and picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    out: dict[str, list] = {"step": [r.get("step") for r in picked]}
    for key in CURVES:
        out[key] = [_finite(r.get(key)) for r in picked]
    return out


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def summary(run_id: str, folder: Path, logs: LogReader) -> dict[str, Any]:
    """One line of the run list: name, step of total, state, last loss."""
    cfg = _config(folder)
    rows = logs.records(folder / "log.jsonl")
    total = cfg.get("train", {}).get("steps")
    step = rows[-1]["step"] if rows else 0
    try:
        age = time.time() - (folder / "log.jsonl").stat().st_mtime
    except OSError:
        age = math.inf
    finished = isinstance(total, int) and step >= total and (folder / "model.safetensors").is_file()
    # training: the log was written within a few of its own intervals (a slow run logs seldom)
    gap = rows[-1].get("seconds", 0) - rows[-2].get("seconds", 0) if len(rows) > 1 else 0
    live = max(LIVE_SECONDS, 5 * gap) if isinstance(gap, int | float) else LIVE_SECONDS
    state = "finished" if finished else "training" if age < live else "stopped"
    return {"id": run_id, "name": cfg.get("name", run_id), "step": step, "steps": total, "state": state,
            "loss": _finite(rows[-1].get("loss")) if rows else None, "updated": time.time() - age
            if math.isfinite(age) else None, "has_model": (folder / "model.safetensors").is_file()}


def detail(run_id: str, folder: Path, logs: LogReader, recipe_dirs: list[Path]) -> dict[str, Any]:
    """Everything the dashboard shows of one run."""
    cfg = _config(folder)
    samples = sorted(p.name for p in (folder / "samples").glob("*.png")) if (folder / "samples").is_dir() else []
    checkpoints = sorted(p.name for p in (folder / "checkpoints").glob("*.safetensors")) \
        if (folder / "checkpoints").is_dir() else []
    quoted = run_id.replace("%", "%25")
    return {**summary(run_id, folder, logs), "config": cfg, "curves": curves(logs.records(folder / "log.jsonl")),
            "samples": [f"/files/runs/{quoted}/samples/{n}" for n in samples[-SAMPLES_SHOWN:][::-1]],
            "checkpoints": checkpoints, **resume_command(folder, cfg, recipe_dirs)}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _toml(v: Any) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return json.dumps(v)


def resume_command(folder: Path, cfg: dict[str, Any], recipe_dirs: list[Path]) -> dict[str, Any]:
    """The command that continues the run: its recipe (a TOML file in ``recipe_dirs`` of the same name, the one
    closest to the run's config), ``--set`` for every field that differs, and ``--resume``."""
    name, run = cfg.get("name"), _flat(cfg)
    best: tuple[int, Path, list[str]] | None = None
    for folder_ in recipe_dirs:
        for recipe in sorted(folder_.glob("*.toml")) if folder_.is_dir() else []:
            try:
                mine = _flat(to_dict(load_config(recipe)))
            except (UndiffuseError, OSError, ValueError):
                continue
            if mine.get("name") != name:
                continue
            diffs = [k for k in run if k in mine and run[k] != mine[k] and run[k] is not None]
            if best is None or len(diffs) < best[0]:
                best = (len(diffs), recipe, diffs)
    if best is None:
        out = shlex.quote(f"out_dir={_toml(str(folder))}")
        return {"recipe": None, "resume_command": f"undiffuse train RECIPE.toml --set {out} --resume",
                "resume_note": f"no recipe named {name!r} was found in {', '.join(map(str, recipe_dirs))}: "
                               "put the recipe the run was made from in place of RECIPE.toml"}
    _, recipe, diffs = best
    try:
        shown = recipe.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = recipe
    sets = " ".join(f"--set {shlex.quote(f'{k}={_toml(run[k])}')}" for k in diffs)
    return {"recipe": str(shown), "resume_command": " ".join(filter(None, ["undiffuse train", shlex.quote(str(shown)),
                                                                             sets, "--resume"])),
            "resume_note": None}


class Dashboard:
    """The runs under ``runs_dir``, for the dashboard's routes."""

    def __init__(self, runs_dir: Path | None, recipe_dirs: list[Path]):
        self.runs_dir, self.recipe_dirs, self.logs = runs_dir, recipe_dirs, LogReader()

    def runs(self) -> list[dict[str, Any]]:
        return [summary(i, f, self.logs) for i, f in find_runs(self.runs_dir).items()]

    def folder(self, run_id: str) -> Path:
        """The folder of a run found under --runs; anything else is refused."""
        found = find_runs(self.runs_dir)
        if run_id not in found:
            raise ApiError(f"no run {run_id[:80]!r} under {self.runs_dir}", 404)
        return found[run_id]

    def detail(self, run_id: str) -> dict[str, Any]:
        return detail(run_id, self.folder(run_id), self.logs, self.recipe_dirs)

    def sample_file(self, run_id: str, name: str) -> Path:
        from .history import NAME_RE
        folder = self.folder(run_id)
        path = folder / "samples" / name
        if not NAME_RE.match(name) or not path.is_file() or not path.resolve().is_relative_to(folder):
            raise ApiError(f"no sample {name[:60]!r} in run {run_id}", 404)
        return path
