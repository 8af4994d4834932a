"""Training runs under the studio's --runs folder: found by their config.json, named by their relative path."""

from __future__ import annotations

from pathlib import Path

MAX_DEPTH = 2  # runs/NAME and runs/GROUP/NAME


def find_runs(root: Path | None) -> dict[str, Path]:
    """{run id: folder} for every folder under ``root`` (itself and two levels down) that holds a config.json and
    a log.jsonl or a model; the id is the path relative to ``root`` ("." for root itself). Symlinks that lead
    outside ``root`` are skipped."""
    if root is None or not root.is_dir():
        return {}
    base = root.resolve()
    found: dict[str, Path] = {}

    def visit(folder: Path, depth: int) -> None:
        try:
            real = folder.resolve()
        except OSError:
            return
        if not real.is_relative_to(base):
            return
        if is_run(real):
            found[folder.relative_to(root).as_posix()] = real
            return
        if depth < MAX_DEPTH:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                return
            for child in children:
                visit(child, depth + 1)

    visit(root, 0)
    return found


def is_run(folder: Path) -> bool:
    """A run folder: its resolved config, and a log or a model."""
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in ("log.jsonl", "model.safetensors", "checkpoints/latest.safetensors"))
