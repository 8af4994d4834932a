"""The sampler registry and the checks every sampler shares.

A sampler is written as ``def euler(model, x, sigmas, noise, callback, **opts)`` over a
validated model ``model(x, sigma) -> x̂_0`` (σ a float or a (batch,) tensor, ``cond`` already
bound), ``sigmas`` a list of floats ending in 0, ``noise()`` a fresh N(0, I) draw shaped like x
and ``callback(i, sigma, x, x0_hat)``. :func:`register` turns it into the public form

    f(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **opts) -> Tensor

which validates its inputs once and raises :class:`~undiffuse.errors.UndiffuseError` with one
readable line on bad input.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import UndiffuseError
from ..process import check_sigmas

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
Model = Callable[[Tensor, "float | Tensor"], Tensor]


@dataclass(frozen=True)
class SamplerInfo:
    """What the test suite and the CLI need to know about a sampler."""

    name: str
    fn: Callable[..., Tensor]
    order: int | None          # convergence order as an ODE solver (None: stochastic only)
    stochastic: bool           # draws fresh noise with its default options
    adaptive: bool = False     # chooses its own steps; reports them in ``info``
    summary: str = ""
    distilled: bool = False    # made for a distilled model (a consistency function), not for solving a denoiser's ODE


_REGISTRY: dict[str, SamplerInfo] = {}

# The longest step, in λ = −ln σ (h = ln σ/σ_next), on which a sampler takes a higher-order step. A higher-order
# step adds to the first-order (Euler = DDIM) step a multiple of the change of x̂0 between two σ's. The first-order
# step is exact where x̂0 stays put and cannot overshoot; the added multiple extrapolates, and over a long step, where
# x̂0 changes most, it overshoots into saturated noise. Long steps are the first step of a trailing grid (the cosine
# chain's σ = 2·10⁴ → 6.4 at 10 steps: h = 8.1) and the last steps of a few-step Karras grid (σ 3.2 → 0.28 → 0.0064 at
# 5 steps: h = 2.4, 3.8). The final step to σ = 0 is always first order: it lands on x̂0 (diffusers'
# ``lower_order_final``).
#
# Runge–Kutta steps in σ (heun, dpm_2) weigh the change by (σ/σ_next − 1)/2 (Heun; the log-σ midpoint: about
# √(σ/σ_next)), which grows like e^h: on the trailing grid's first step Heun multiplied it by 1 600. H_MAX_RK = ln 5
# keeps that weight ≤ 2. The multistep solvers (dpmpp_*, unipc, lms) weigh it by about h/(2·h_prev), which stays
# bounded, but still extrapolate x̂0 across the whole step; an SDE solver's exponential step spans (1 + η)·h.
# Measured on the shipped Fashion-MNIST model, 2 images per class, seeded (bench/sampler_defaults.py re-runs it at
# any n); "noise" = most pixels beyond ±1.2, where healthy samples have none.
#   Every step at full order: heun was noise on the trailing grid at every step count (45–99 % of pixels beyond
#   ±1.2, 10–30 % recognised); on the Karras grid σ 80 → 0.0064 heun and dpmpp_3m_sde were noise at 5 steps (24 %,
#   58 % beyond ±1.2), dpm_2, dpmpp_2m and unipc 2–4 %, and dpmpp_3m_sde still 7 % at 10 steps.
#   H_MAX = 2, H_MAX_RK = ln 5: no sampler above 0.1 % at 5, 10, 20 or 50 steps on the Karras or trailing grid (nor
#   a higher-order one at 5 or 10 on the exponential grid), 85–100 % recognised; every step of a 20-step Karras or
#   trailing grid past the first stays higher order (h ≤ 1). A bound of 2.5 left heun broken at 5 steps (21 % on
#   the Karras grid, 35 % on the exponential); 1.5 for the multistep solvers cost dpmpp_2m at 10 steps (FD of the
#   classifier's features 8.1 vs 7.5, 200 samples).
H_MAX = 2.0
H_MAX_RK = math.log(5)


def step_order(sigma: float, sigma_next: float, order: int, h_max: float = H_MAX, eta: float = 0.0) -> int:
    """The order a sampler may use for the step σ → σ_next: 1 for the final step to 0 and for a step longer than
    ``h_max`` in λ = −ln σ (see :data:`H_MAX`), else ``order``. An SDE solver's exponential step spans (1 + η)·h."""
    if sigma_next == 0 or (1 + eta) * math.log(sigma / sigma_next) > h_max:
        return 1
    return order


def make_generators(seeds: Sequence[int] | int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample, so that a sample depends only on its own seed."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: GeneratorArg = None, dtype: torch.dtype = torch.float32,
          device: str | torch.device = "cpu") -> Tensor:
    """N(0, I) of ``shape``; with a list of generators row i is drawn from generator i alone."""
    if generator is None:
        return torch.randn(*shape, dtype=dtype, device=device)
    # drawn where the generator lives (CPU generators keep samples identical on every device), then moved
    if isinstance(generator, torch.Generator):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=generator.device).to(device)
    if len(generator) != shape[0]:
        raise UndiffuseError(f"got {len(generator)} generators for a batch of {shape[0]} samples")
    return torch.stack([torch.randn(*shape[1:], generator=g, dtype=dtype, device=g.device)
                        for g in generator]).to(device)


def _validated_model(denoiser: Callable[..., Tensor], cond: Any) -> Model:
    """Bind ``cond``, give σ the shape (batch,), and check what the denoiser returns.

    ``rows`` (indices into the batch) is for samplers that evaluate a subset of the samples: the
    condition is subset to match.
    """
    def model(x: Tensor, sigma: float | Tensor, rows: Tensor | None = None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.expand(x.shape[0]) if s.ndim == 0 else s
        out = denoiser(x, s, cond=cond if rows is None else _rows(cond, rows))
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UndiffuseError(f"the denoiser returned {got} for an input of shape {tuple(x.shape)}; "
                                 "it must return x̂0 of the same shape")
        if out.dtype != x.dtype:
            raise UndiffuseError(f"the denoiser returned dtype {out.dtype} for an input of dtype {x.dtype}")
        return out
    return model


def _rows(cond: Any, rows: Tensor) -> Any:
    """The condition of a subset of the batch (a tensor, or a dict of tensors such as text embeddings)."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[rows.to(cond.device)]
    if isinstance(cond, dict):
        return {k: _rows(v, rows) for k, v in cond.items()}
    raise UndiffuseError(f"cannot take a subset of a condition of type {type(cond).__name__}")


def _check_x(x: Any, generator: GeneratorArg) -> None:
    if not isinstance(x, Tensor):
        raise UndiffuseError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UndiffuseError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise UndiffuseError(f"x must have a batch dimension with at least one sample, got shape {tuple(x.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != x.shape[0]:
            raise UndiffuseError(f"got {len(generator)} generators for a batch of {x.shape[0]} samples")


def register(name: str, *, order: int | None, stochastic: bool, adaptive: bool = False, distilled: bool = False):
    """Decorator: wrap a sampler body into the public signature and add it to the registry."""
    def wrap(body: Callable[..., Tensor]) -> Callable[..., Tensor]:
        allowed = set(inspect.signature(body).parameters) - {"model", "x", "sigmas", "noise", "callback"}

        @functools.wraps(body)
        def sampler(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor | Sequence[float], *,
                    cond: Any = None, generator: GeneratorArg = None,
                    callback: Callable[..., Any] | None = None, **opts: Any) -> Tensor:
            unknown = set(opts) - allowed
            if unknown:
                raise UndiffuseError(f"sampler {name!r} has no option {', '.join(sorted(unknown))}; "
                                     f"its options: {', '.join(sorted(allowed)) or 'none'}")
            _check_x(x, generator)
            grid = check_sigmas(sigmas).tolist()
            def noise() -> Tensor:
                return randn(x.shape, generator, x.dtype, x.device)
            cb = callback if callback is not None else (lambda *a: None)
            with torch.no_grad():
                return body(_validated_model(denoiser, cond), x, grid, noise, cb, **opts)

        summary = (body.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = SamplerInfo(name, sampler, order, stochastic, adaptive, summary[0] if summary else name,
                                      distilled)
        return sampler
    return wrap


def get(name: str) -> Callable[..., Tensor]:
    """The sampler registered under ``name`` (or a web-UI name of it, :func:`resolve`)."""
    return info(name).fn


def info(name: str) -> SamplerInfo:
    """Registry entry (order, stochastic, summary) of a sampler, by its name or a web-UI name of it.

    A name that also picks a σ grid ("DPM++ 2M Karras") is refused here, where the grid would be lost: it is
    accepted where a grid is chosen too (:func:`resolve`, as `undiffuse sample` and the studio do)."""
    canonical, grid = resolve(name)
    if grid is not None:
        raise UndiffuseError(f"{name!r} names a sampler and a σ grid ({canonical} on the {grid} grid); here give the "
                             f"sampler alone: {canonical!r} (or {WEBUI_NAMES.get(canonical, canonical)!r})")
    return _REGISTRY[canonical]


def names() -> list[str]:
    """All registered sampler names, in registration order."""
    return list(_REGISTRY)


# ------------------------------------------------------------------ the names people know
# The web UIs' names (AUTOMATIC1111's sampler dropdown, ComfyUI's KSampler) of the samplers registered here. The
# algorithms match; their default options are ours (e.g. unipc's variant "bh2", where A1111 defaults to "bh1"), and
# noise is a fresh N(0, I) draw per step where k-diffusion's SDE samplers may draw a Brownian tree: the same
# distribution, not the same numbers. There is no "DPM++ SDE", "DPM++ 2S a", "DPM2 a", "DPM fast", "Restart" or
# "PLMS" here: those names are unknown, never mapped to a neighbour.
WEBUI_NAMES: dict[str, str] = {   # our name → A1111's label (what the PNG infotext writes)
    "ddpm": "DDPM", "ddim": "DDIM", "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun",
    "dpm_2": "DPM2", "lms": "LMS", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "unipc": "UniPC", "adaptive": "DPM adaptive", "consistency": "LCM",
}
_OTHER_NAMES: dict[str, str] = {  # ComfyUI's KSAMPLER_NAMES where they differ from ours, and A1111's old k_ aliases
    "dpm_adaptive": "adaptive", "uni_pc": "unipc", "lcm": "consistency", "k_euler": "euler",
    "k_euler_a": "euler_ancestral", "k_heun": "heun", "k_dpm_2": "dpm_2", "k_lms": "lms", "k_dpmpp_2m": "dpmpp_2m",
}
# σ grids under the web UIs' scheduler names. Karras and Exponential are the same formulas over the model's σ range.
# ComfyUI's uniform-in-t schedulers are the same spacing rules on the chain's integer steps: "simple" starts at
# t = T-1 in steps of T/n (trailing), "ddim_uniform" at the start in steps of T/n (leading; ComfyUI offsets it by
# one step), "normal" spreads n steps over the whole chain (linspace; ComfyUI interpolates fractional t, we round).
WEBUI_GRIDS: dict[str, str] = {"karras": "Karras", "exponential": "Exponential"}  # our grid → A1111's label
_GRID_NAMES: dict[str, str] = {"karras": "karras", "exponential": "exponential", "simple": "trailing",
                               "ddim_uniform": "leading", "normal": "linspace"}
_KA_SUFFIX = "_ka"  # A1111's old aliases for the Karras variants: k_dpmpp_2m_ka, k_lms_ka, …


def _key(name: str) -> str:
    """Names compare without case and with runs of spaces as one ("euler A" is "Euler a")."""
    return " ".join(str(name).split()).lower()


def _sampler_table() -> dict[str, str]:
    """Every accepted sampler name (as :func:`_key` gives it) → the registered name, for the samplers that exist."""
    table = {_key(n): n for n in _REGISTRY}
    table.update({_key(label): n for n, label in WEBUI_NAMES.items() if n in _REGISTRY})
    table.update({_key(alias): n for alias, n in _OTHER_NAMES.items() if n in _REGISTRY})
    return table


def resolve(name: str) -> tuple[str, str | None]:
    """(registered sampler name, the σ grid the name picks or None) of a name as our CLI or a web UI writes it:
    ``dpmpp_2m``, ``"DPM++ 2M"``, ``"DPM++ 2M Karras"`` (→ the karras grid), ``"Euler a"``, ComfyUI's ``uni_pc``,
    A1111's ``k_dpmpp_2m_ka``. Case and repeated spaces do not matter; an unknown name is refused, naming the known
    ones."""
    table, key = _sampler_table(), _key(name)
    if key in table:
        return table[key], None
    for suffix, grid in ((" karras", "karras"), (" exponential", "exponential"), (_KA_SUFFIX, "karras")):
        if key.endswith(suffix) and key[: -len(suffix)] in table:
            return table[key[: -len(suffix)]], grid
    webui = [WEBUI_NAMES[n] for n in _REGISTRY if n in WEBUI_NAMES]
    raise UndiffuseError(f"unknown sampler {name!r}; known: {', '.join(names())} (or as the web UIs name them: "
                         f"{', '.join(webui)}, with ' Karras' or ' Exponential' to pick the σ grid)")


def resolve_grid(name: str) -> str:
    """Our σ grid name of a grid named as we or a web UI do ("Karras", ComfyUI's "simple"); other names pass through
    unchanged (the grid builder refuses an unknown one, naming the known ones)."""
    return _GRID_NAMES.get(_key(name), name)


def webui_name(name: str) -> str:
    """A1111's label of a sampler ("DPM++ 2M" for dpmpp_2m); a name without one is returned as it is."""
    try:
        canonical, _ = resolve(name)
    except UndiffuseError:
        return name
    return WEBUI_NAMES.get(canonical, canonical)


def aliases(name: str) -> list[str]:
    """Every other name that :func:`resolve` maps to sampler ``name`` alone (not the grid-picking ones)."""
    webui = [WEBUI_NAMES[name]] if name in WEBUI_NAMES else []
    return webui + [alias for alias, n in _OTHER_NAMES.items() if n == name]
