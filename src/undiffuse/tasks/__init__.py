"""Image tasks with a trained denoiser: inpaint, upscale, edit (SDEdit), denoise, and animate (image-to-video).
Each is a denoiser wrapper or a choice of starting point and σ grid, so it works with every registered sampler."""

from .consistency import InpaintDenoiser, UpscaleDenoiser, downsample, upsample
from .run import denoise, edit, estimate_noise_sigma, inpaint, upscale
from .video import animate

__all__ = ["InpaintDenoiser", "animate", "UpscaleDenoiser", "denoise", "downsample", "edit", "estimate_noise_sigma",
           "inpaint", "upsample", "upscale"]
