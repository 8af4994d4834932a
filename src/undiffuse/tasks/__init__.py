"""Image tasks with a trained denoiser: inpaint, upscale, edit (SDEdit), denoise. Each is a denoiser
wrapper or a choice of starting point and σ grid, so it works with every registered sampler."""

from .consistency import InpaintDenoiser, UpscaleDenoiser, downsample, upsample
from .run import denoise, edit, estimate_noise_sigma, inpaint, upscale

__all__ = ["InpaintDenoiser", "UpscaleDenoiser", "denoise", "downsample", "edit", "estimate_noise_sigma",
           "inpaint", "upsample", "upscale"]
