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


_REGISTRY: dict[str, SamplerInfo] = {}


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


def register(name: str, *, order: int | None, stochastic: bool, adaptive: bool = False):
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
        _REGISTRY[name] = SamplerInfo(name, sampler, order, stochastic, adaptive, summary[0] if summary else name)
        return sampler
    return wrap


def get(name: str) -> Callable[..., Tensor]:
    """The sampler registered under ``name``."""
    return info(name).fn


def info(name: str) -> SamplerInfo:
    """Registry entry (order, stochastic, summary) of a sampler."""
    if name not in _REGISTRY:
        raise UndiffuseError(f"unknown sampler {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """All registered sampler names, in registration order."""
    return list(_REGISTRY)
