"""Measures of how close generated samples are to the data."""

from .distances import energy_distance, sliced_wasserstein

__all__ = ["energy_distance", "sliced_wasserstein"]
