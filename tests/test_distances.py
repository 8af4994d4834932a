"""Two-sample distances: zero for identical samples, exact for a shift, ordered by closeness."""

import math

import pytest
import torch

from undiffuse.evaluation import energy_distance, sliced_wasserstein


def test_identical_samples_are_at_distance_zero():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert energy_distance(x, x) == pytest.approx(0, abs=1e-12)
    assert sliced_wasserstein(x, x) == 0


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt_d():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([0.6, 0.8])                     # |v| = 1; E(θ·v)² = |v|²/2 in 2-D
    assert sliced_wasserstein(x, x + shift, n_projections=4000) == pytest.approx(1 / math.sqrt(2), rel=0.03)


def test_energy_distance_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g)
    d = [energy_distance(x, y + torch.tensor([s, 0.0])) for s in (0.0, 0.5, 1.0)]
    assert d[0] < 0.01 < d[1] < d[2]
    with pytest.raises(ValueError, match="equal sample counts"):
        sliced_wasserstein(x, y[:10])
