"""Checkpoints: one safetensors file per save, written atomically, never a pickle.

Tensors are grouped by prefix (``model.``, ``ema.``, ``optim.``, ``rng.``); everything else
(config, step, optimizer hyper-parameters) is JSON in the file's metadata. A write goes to a
temporary file in the same folder, is fsync'ed, then renamed over the target, so a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from .errors import UndiffuseError


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename tmp over ``path`` (same folder, so rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file's permissions, not mkstemp's private 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PROVENANCE_PREFIX = "undiffuse."  # header keys of a checkpoint's provenance, beside the JSON under "undiffuse"


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON metadata to ``path`` atomically.

    ``meta["provenance"]`` (recipe hash, data, steps, versions: :meth:`undiffuse.train.Trainer.provenance`) is also
    written as plain header keys ``undiffuse.recipe_hash``, … that any safetensors reader shows (as kohya's ``ss_*``
    keys are), without parsing our JSON."""
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    header = {"undiffuse": json.dumps(meta),
              **{PROVENANCE_PREFIX + k: str(v) for k, v in (meta.get("provenance") or {}).items()}}
    try:
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    except OSError as err:
        raise UndiffuseError(f"could not write checkpoint {path}: {err.strerror or err}") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors only; never unpickles)."""
    p = Path(path)
    if not p.is_file():
        raise UndiffuseError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("undiffuse", "{}"))
        tensors = load_file(str(p))
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as err:
        raise UndiffuseError(f"{p} is not a readable safetensors checkpoint ({err})") from None
    return tensors, meta


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str], dict[str, tuple[int, ...]]]:
    """(our JSON metadata, the raw header metadata, each tensor's shape) of a safetensors file, without reading
    its tensors (safetensors only; never unpickles)."""
    p = Path(path)
    if not p.is_file():
        raise UndiffuseError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        meta = json.loads(header.get("undiffuse", "{}"))
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as err:
        raise UndiffuseError(f"{p} is not a readable safetensors checkpoint ({err})") from None
    return meta, header, shapes


def group(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix.``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def load_module_state(module: nn.Module, state: dict[str, Tensor], what: str = "model") -> None:
    """Load weights strictly, naming the first missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise UndiffuseError(f"{what}: tensor {missing[0]!r} is missing from the checkpoint"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise UndiffuseError(f"{what}: unexpected tensor {extra[0]!r} in the checkpoint"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise UndiffuseError(f"{what}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                 f"the model expects {tuple(v.shape)}")
        if state[k].dtype != v.dtype and not (state[k].is_floating_point() and v.is_floating_point()):
            raise UndiffuseError(f"{what}: tensor {k!r} has dtype {state[k].dtype}, the model expects {v.dtype}")
        if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()):
            raise UndiffuseError(f"{what}: tensor {k!r} contains inf or NaN")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state as flat tensors plus JSON-able hyper-parameters."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as err:
        raise UndiffuseError(f"optimizer state does not match the model: {err}") from None
