"""Measures of how close generated samples are to the data, and of a model's likelihood."""

from .distances import energy_distance, sliced_wasserstein
from .evaluate import EvalSettings, evaluate
from .fid import fid_from_features, kernel_distance
from .likelihood import exact_nll, ode_bits_per_dim, ode_log_likelihood, vlb_bits_per_dim
from .precision_recall import precision_recall

__all__ = ["EvalSettings", "energy_distance", "evaluate", "exact_nll", "fid_from_features", "kernel_distance",
           "ode_bits_per_dim", "ode_log_likelihood", "precision_recall", "sliced_wasserstein", "vlb_bits_per_dim"]
