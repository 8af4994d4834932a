"""Data sets: 2-D toy distributions (images to follow)."""

from .toy import TOY_SETS, toy_dataset

__all__ = ["TOY_SETS", "toy_dataset"]
