"""The denoising loss is the MSE of each wrapper's own network output, with optional min-SNR-γ."""

import pytest
import torch

from undiffuse.denoiser import EDMDenoiser, VPDenoiser, from_x0
from undiffuse.losses import denoising_loss, min_snr_weight


class Recorder(torch.nn.Module):
    """A fixed random linear map that remembers what it returned."""

    def __init__(self):
        super().__init__()
        self.w = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def forward(self, x, noise_cond, cond=None):
        self.out = x @ self.w + noise_cond[:, None]
        return self.out


def batch():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(64, generator=g, dtype=torch.float64) * 1.5)
    return x0, noise, sigma


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_loss_is_the_mse_of_the_network_output(prediction):
    x0, noise, sigma = batch()
    net = Recorder()
    loss = denoising_loss(VPDenoiser(net, prediction), x0, sigma, noise=noise)
    x = x0 + sigma[:, None] * noise
    target = from_x0(prediction, x, sigma, x0)          # ε, x0 or v
    assert torch.allclose(loss, (net.out - target).pow(2).mean(), rtol=1e-9)


def test_edm_loss_is_the_mse_of_f_theta():
    x0, noise, sigma = batch()
    net, sd = Recorder(), 0.5
    loss = denoising_loss(EDMDenoiser(net, sd), x0, sigma, noise=noise)
    s = sigma[:, None]
    x = x0 + s * noise
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    f_target = (x0 - c_skip * x) / c_out                # Karras et al. 2022, eq. 8
    assert torch.allclose(loss, (net.out - f_target).pow(2).mean(), rtol=1e-9)


def test_min_snr_weights_the_eps_error_by_min_snr_over_snr():
    x0, noise, sigma = batch()
    net = Recorder()
    loss = denoising_loss(VPDenoiser(net, "eps"), x0, sigma, noise=noise, min_snr_gamma=5.0)
    snr = sigma**-2
    per_sample = (net.out - noise).pow(2).mean(1)
    assert torch.allclose(loss, (torch.clamp(snr, max=5.0) / snr * per_sample).mean(), rtol=1e-9)
    assert torch.equal(min_snr_weight(torch.tensor([0.1, 1.0]), 5.0), torch.tensor([5.0, 1.0]))
