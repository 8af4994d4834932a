"""undiffuse: denoising diffusion models — train them, understand them, run them fast.

The core abstraction is a denoiser ``D(x, sigma, cond) -> x̂0`` over samples in σ-form
(x = x0 + σ ε); samplers are pure functions over a denoiser and a σ grid.
"""

from . import process, samplers
from .denoiser import Denoiser, EDMDenoiser, VPDenoiser
from .errors import UndiffuseError
from .process import DiscreteSchedule

__version__ = "0.1.0"
__all__ = ["Denoiser", "DiscreteSchedule", "EDMDenoiser", "UndiffuseError", "VPDenoiser", "process", "samplers"]
