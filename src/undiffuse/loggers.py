"""Where training metrics go: ``log.jsonl`` always; TensorBoard event files and an offline wandb run where
``train.log`` names them.

TensorBoard and wandb are optional extras, imported only when named: without the package, the run stops before any
work with one line naming the extra to install (a missing tensorboard package breaking a training script is a known
complaint of other tools). Both get the same numbers as the JSONL lines, as ``train/loss``, ``train/lr``,
``train/grad_norm`` and ``train/img_per_s`` against the step, and the periodic sample grids as images.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import UndiffuseError

# train.log name → (the module it needs, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
SCALARS = ("loss", "lr", "grad_norm", "img_per_s")  # the numbers of a log line that go to TensorBoard and wandb


def check_loggers(names: list[str]) -> None:
    """Refuse, in one line naming the extra, a logger whose package is not installed."""
    for name in names:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            module, extra = EXTRAS[name]
            raise UndiffuseError(f"train.log names {name}, which needs the {module} package: "
                                 f"pip install 'undiffuse[{extra}]' (or leave {name} out of train.log)")


class RunLog:
    """The run's loggers. ``enabled`` False (a data-parallel rank other than 0) writes nothing anywhere."""

    def __init__(self, out: Path, names: list[str], config: dict[str, Any], name: str, step: int = 0,
                 enabled: bool = True):
        self.jsonl = open(out / "log.jsonl", "a") if enabled else open(os.devnull, "w")
        self.tensorboard = self.wandb = None
        if not enabled:
            return
        check_loggers(names)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: on resume, events written after the checkpoint by the interrupted run are dropped
            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=step or None, flush_secs=30)
        if "wandb" in names:
            self.wandb = _wandb_run(out, name, config)

    def line(self, row: dict[str, Any]) -> None:
        """One JSON line of log.jsonl (e.g. the data's summary)."""
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()

    def metrics(self, step: int, row: dict[str, Any]) -> None:
        """A log line {"step": step, **row}; its :data:`SCALARS` also to TensorBoard and wandb."""
        self.line({"step": step, **row})
        numbers = {f"train/{k}": float(row[k]) for k in SCALARS if k in row}
        if self.tensorboard is not None:
            for tag, value in numbers.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def image(self, step: int, tag: str, picture: Tensor) -> None:
        """A (C, H, W) picture in [-1, 1] (a preview grid) to TensorBoard and wandb; JSONL has its PNG's name."""
        if self.tensorboard is None and self.wandb is None:
            return
        from .images import to_uint8
        pixels = to_uint8(picture)  # (H, W) or (H, W, 3)
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, pixels, step, dataformats="HW" if pixels.ndim == 2 else "HWC")
        if self.wandb is not None:
            import wandb
            self.wandb.log({tag: wandb.Image(pixels)}, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(out: Path, name: str, config: dict[str, Any]) -> Any:
    """An offline wandb run in OUT/wandb (``wandb sync`` uploads it later; WANDB_MODE overrides, e.g. "disabled"),
    the same run again on resume (its id is kept in OUT/wandb-run-id)."""
    import wandb

    id_file = out / "wandb-run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "undiffuse"), name=name, id=run_id, resume="allow",
                      dir=str(out), mode=os.environ.get("WANDB_MODE", "offline"), config=config)
