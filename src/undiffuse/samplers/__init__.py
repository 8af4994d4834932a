"""Samplers: pure functions over a denoiser and a decreasing σ grid ending in 0.

    from undiffuse import samplers
    x0 = samplers.get("dpmpp_2m")(denoiser, x, sigmas, generator=gens)

``names()`` lists every registered sampler; ``info(name)`` tells its order and whether it is stochastic. The web UIs'
names are accepted too: ``resolve("DPM++ 2M Karras")`` is ``("dpmpp_2m", "karras")``.
"""

# Import order is the order of names(): the DDPM family, Runge–Kutta, multistep, adaptive, few-step.
from . import ddpm, euler, lms, dpmpp, unipc, adaptive, consistency  # noqa: F401, I001  (registers the samplers)
from .registry import (H_MAX, H_MAX_RK, WEBUI_GRIDS, WEBUI_NAMES, SamplerInfo, aliases, get, info, make_generators,
                       names, randn, register, resolve, resolve_grid, step_order, webui_name)

__all__ = ["H_MAX", "H_MAX_RK", "WEBUI_GRIDS", "WEBUI_NAMES", "SamplerInfo", "aliases", "get", "info",
           "make_generators", "names", "randn", "register", "resolve", "resolve_grid", "step_order", "webui_name"]
