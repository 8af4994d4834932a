"""A 2-D toy model's exact likelihood against the true density of its data: `undiffuse evaluate` on a point model.

The model's log-density comes from its probability-flow ODE with the exact trace (Song et al. 2021,
app. D.2); the truth from data/toy_density.py. Both are evaluated on fresh points of the data set,
so the mean gap, model NLL − true NLL, estimates KL(data ‖ model) ≥ 0 in nats.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ..data.toy import toy_dataset
from ..data.toy_density import toy_log_density
from ..errors import UndiffuseError
from ..models import LoadedModel, sigma_range
from .likelihood import exact_nll

FRESH_SEED = 10_000   # added to the seed so that the points are not the training draw


@dataclass
class PointEvaluation:
    """Mean NLLs in nats per point (and bits per dimension) of the model and of the true density."""

    model: str
    data: str
    n: int
    model_nll: float
    true_nll: float
    gap: float
    gap_stderr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        bits = 1 / (2 * 0.6931471805599453)   # nats per point → bits per dimension (2 dimensions)
        return "\n".join([
            f"{self.model}: exact NLL on {self.n} fresh {self.data} points (probability-flow ODE, exact trace)",
            f"  {'':24}{'nats/point':>11}{'bits/dim':>10}",
            f"  {'model':24}{self.model_nll:>11.4f}{self.model_nll * bits:>10.4f}",
            f"  {'true density':24}{self.true_nll:>11.4f}{self.true_nll * bits:>10.4f}",
            f"  {'gap ≈ KL(data ‖ model)':24}{self.gap:>11.4f}{self.gap * bits:>10.4f}  ± {self.gap_stderr:.4f}",
            f"  {self.seconds:.1f} s"])


def evaluate_points(model: LoadedModel, n: int = 2000, seed: int = 0, rtol: float = 1e-5,
                    progress: bool = True) -> PointEvaluation:
    """Exact NLL of a 2-D toy model on n fresh points of its data set, beside the true NLL."""
    cfg = model.config
    if cfg.data.name != "toy" or not model.meta.get("dim"):
        raise UndiffuseError(f"{model.source} is not a 2-D toy model: the exact NLL needs a known true density")
    if n < 2:
        raise UndiffuseError(f"n must be at least 2, got {n}")
    points = toy_dataset(cfg.data.toy_set, n, seed=seed + FRESH_SEED)
    lo, hi = sigma_range(cfg)
    t0 = time.perf_counter()
    # the sampler starts at σ_max·ε; the data (unit variance) adds 1 to the prior's variance
    cmp = exact_nll(model.denoiser, points, lambda p: toy_log_density(cfg.data.toy_set, p), lo, hi,
                    rtol=rtol, atol=rtol, prior_var=1.0, batch_size=512, progress=progress)
    return PointEvaluation(model.source, cfg.data.toy_set, n, cmp.model_nll, cmp.true_nll, cmp.gap, cmp.gap_stderr,
                           time.perf_counter() - t0)
