"""Measures of how close generated samples are to the data."""

from .distances import energy_distance, sliced_wasserstein
from .likelihood import exact_nll, ode_bits_per_dim, ode_log_likelihood, vlb_bits_per_dim

__all__ = ["energy_distance", "exact_nll", "ode_bits_per_dim", "ode_log_likelihood", "sliced_wasserstein",
           "vlb_bits_per_dim"]
