"""The KL autoencoder of latent diffusion: shapes, errors, losses, PSNR, a short real training, latent scale."""

import pytest
import torch
import torch.nn.functional as F

from undiffuse.errors import UndiffuseError
from undiffuse.nets.autoencoder import (
    Autoencoder,
    autoencoder_loss,
    kl_divergence,
    measure_scale,
    psnr,
    reconstruction_loss,
)
from undiffuse.nets.cpu import train_autocast


pytestmark = pytest.mark.usefixtures("one_thread")


def make(**kw) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(**{**dict(channels=16, groups=8), **kw})


def shapes(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n images (n, 3, size, size) in [-1, 1]: one to three random coloured rectangles or discs on white."""
    x = torch.ones(n, 3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            colour = torch.rand(3, 1, generator=g) * 2 - 1
            cy, cx = torch.rand(2, generator=g) * size
            r = 2 + torch.rand(1, generator=g) * size / 4
            if torch.rand(1, generator=g) < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            else:
                mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= 0.7 * r)
            x[i][:, mask] = colour
    return x


@pytest.mark.parametrize("mult, f", [((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 2), 8)])
def test_shapes(mult, f):
    net = make(channel_mult=mult, latent_channels=3, attention=f == 4)
    assert net.factor == f and net.latent_shape(32) == (3, 32 // f, 32 // f)
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, 3, 32 // f, 16 // f)
    assert net.decode(mean).shape == x.shape
    recon, m, lv = net(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and m.shape == mean.shape and torch.isfinite(recon).all()


def test_bad_inputs_raise():
    net = make()  # f = 4
    with pytest.raises(UndiffuseError, match="takes images"):
        net.encode(torch.randn(2, 1, 16, 16))
    with pytest.raises(UndiffuseError, match="takes images"):
        net(torch.randn(3, 16, 16))
    with pytest.raises(UndiffuseError, match="not divisible"):
        net.encode(torch.randn(2, 3, 16, 18))
    with pytest.raises(UndiffuseError, match="decodes latents"):
        net.decode(torch.randn(2, 3, 4, 4))
    with pytest.raises(UndiffuseError, match="multiple of the factor 4"):
        net.latent_shape(18)


@pytest.mark.parametrize("kw, msg", [
    (dict(channels=12), "GroupNorm"),                   # 12 % 8
    (dict(channels=32, groups=24), "GroupNorm"),
    (dict(channel_mult=(1, 3), groups=32), "GroupNorm"),  # 16 and 48 % 32
    (dict(channel_mult=()), "positive"),
    (dict(channel_mult=(1, 0)), "positive"),
    (dict(num_res_blocks=0), "positive"),
    (dict(latent_channels=0), "positive"),
    (dict(groups=0), "positive"),
])
def test_bad_config_raises(kw, msg):
    with pytest.raises(UndiffuseError, match=msg):
        make(**kw)


def test_psnr():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    same = psnr(x, x)
    assert same.shape == (2,) and torch.isfinite(same).all() and (same >= 99).all()
    # An offset of 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01, 20 dB.
    assert torch.allclose(psnr(x + 0.2, x), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(psnr(x, x - torch.tensor([0.2, 0.02])[:, None, None, None]), torch.tensor([20.0, 40.0]),
                          atol=1e-3)


def test_kl_divergence():
    zeros = torch.zeros(4, 2, 3, 3)
    assert kl_divergence(zeros, zeros) == 0
    assert kl_divergence(zeros + 0.5, zeros) > 0 and kl_divergence(zeros, zeros - 1) > 0
    mean, logvar = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_divergence(mean, logvar), ref.flatten(1).sum(1).mean(), rtol=1e-5)


def test_reconstruction_loss_and_edge_term():
    x = shapes(4, 16, torch.Generator().manual_seed(0))
    assert reconstruction_loss(x, x) == 0
    assert reconstruction_loss(x.flip(0), x) > 0
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    offset = x - (blurred - x).abs().mean()     # the same L1 as the blur, but every edge kept
    assert torch.allclose((offset - x).abs().mean(), (blurred - x).abs().mean())
    assert reconstruction_loss(offset, x, edge_weight=0.0, multiscale_weight=0.0) == pytest.approx(
        reconstruction_loss(blurred, x, edge_weight=0.0, multiscale_weight=0.0).item())
    assert reconstruction_loss(blurred, x, multiscale_weight=0.0) > 1.2 * reconstruction_loss(
        offset, x, multiscale_weight=0.0)


def test_forward_sampling():
    net = make(channel_mult=(1, 2))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    a = net(x, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, net(x, generator=torch.Generator().manual_seed(1))[0])   # ε from the generator
    recon, mean, _ = net(x, sample=False)
    assert torch.equal(recon, net.decode(mean))
    assert (a - recon).abs().max() > 1e-3      # at init σ ≈ 1: the sample differs from the mean's decoding
    with train_autocast(True):
        out = net(x, sample=False)
    assert all(t.dtype == torch.float32 for t in out) and torch.isfinite(out[0]).all()


@pytest.fixture(scope="module")
def trained():
    """An f = 2 autoencoder (4×8×8 latents for 3×16×16 images) after 300 Adam steps: ~10 s on one thread."""
    g = torch.Generator().manual_seed(0)
    train, test = shapes(64, 16, g), shapes(32, 16, g)
    net = make(channel_mult=(1, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(300):
        loss, _ = autoencoder_loss(net, train[torch.randperm(64, generator=g)[:16]], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, train, test


def test_training_reconstructs_held_out_images(trained):
    net, train, test = trained
    with torch.no_grad():
        recon, mean, _ = net(test, sample=False)
        baseline = psnr(train.mean(0, keepdim=True).expand_as(test), test).mean()   # predict the mean image
        assert psnr(recon, test).mean() > baseline + 5       # measured: 19.7 dB against 12.4 dB
        assert torch.allclose(net.decode(net.encode(test)[0]), recon, atol=1e-6)


def test_measure_scale(trained):
    net, train, _ = trained
    scale = measure_scale(net, train, batch_size=24)       # batches of 24, 24 and 16
    assert scale == pytest.approx(measure_scale(net, train), rel=1e-6)
    with torch.no_grad():
        latents = net.encode(train)[0] * scale
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)


def test_every_parameter_gets_a_gradient():
    net = make(attention=True)
    with torch.no_grad():        # the attention block's output projection starts at zero: give it weights
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    x = shapes(2, 16, torch.Generator().manual_seed(0))
    loss, stats = autoencoder_loss(net, x, generator=torch.Generator().manual_seed(0))
    assert set(stats) == {"rec", "kl", "l1"} and all(isinstance(v, float) for v in stats.values())
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
