"""``undiffuse explain``: a page that shows how diffusion works, computed from the real process and model."""

from .build import build_explainer

__all__ = ["build_explainer"]
