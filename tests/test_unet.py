"""The ADM-style U-Net: shapes, conditioning, errors, gradients, bf16 autocast, batch independence."""

import pytest
import torch
import torch.nn.functional as F

from undiffuse.errors import UndiffuseError
from undiffuse.nets.blocks import Dropout
from undiffuse.nets.cpu import attention_fp32, train_autocast
from undiffuse.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(channels=32, head_dim=32, dropout=0.0)  # a tiny net: every test stays well under a second


def perturbed(net: UNet, scale: float = 0.05, seed: int = 0) -> UNet:
    """Add noise to every weight: the zero-initialised convs otherwise make F ≡ 0 and hide the rest."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def make(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**SMALL, **kw})


@pytest.mark.parametrize("in_ch, size, mult, attn", [
    (1, 32, (1, 2, 2), (8,)),
    (3, 32, (1, 2, 2), (16, 8)),
    (1, 28, (1, 2), (14,)),
    (3, 28, (1, 2), ()),
    (1, 8, (1, 2), (4,)),
    (3, 8, (1,), (8,)),
])
def test_output_shape(in_ch, size, mult, attn):
    net = make(in_channels=in_ch, image_size=size, channel_mult=mult, attention_resolutions=attn)
    x = torch.randn(2, in_ch, size, size)
    out = net(x, torch.tensor([3.0, 700.0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv: F starts as 0


def test_other_sizes_and_out_channels():
    net = perturbed(make(in_channels=3, out_channels=6, noise_embedding="fourier"))
    for h, w in [(24, 40), (16, 16), (4, 12)]:  # any size divisible by 2**(levels-1) = 4
        out = net(torch.randn(2, 3, h, w), torch.randn(2))
        assert out.shape == (2, 6, h, w) and torch.isfinite(out).all()
    assert net(torch.randn(2, 3, 8, 8), torch.tensor(0.5)).shape == (2, 6, 8, 8)  # scalar noise level


def test_class_conditioning_and_null_label():
    net = perturbed(make(num_classes=10)).eval()
    x, t = torch.randn(4, 1, 32, 32), torch.full((4,), 500.0)
    a = net(x, t, torch.tensor([0, 1, 2, 3]))
    b = net(x, t, torch.tensor([4, 5, 6, 7]))
    assert (a - b).abs().max() > 1e-3                                   # the label matters
    none = net(x, t, None)
    assert torch.allclose(net(x, t, torch.full((4,), -1)), none, atol=1e-6)   # -1 is "no class"
    assert torch.allclose(net(x, t, torch.full((4,), 10)), none, atol=1e-6)   # so is num_classes
    mixed = net(x, t, torch.tensor([0, -1, 2, -1]))
    assert torch.allclose(mixed[[0, 2]], a[[0, 2]], atol=1e-5)
    assert torch.allclose(mixed[[1, 3]], none[[1, 3]], atol=1e-5)


@pytest.mark.parametrize("kw, msg", [
    (dict(image_size=30), "not divisible"),                            # 30 % 4
    (dict(channels=48), "GroupNorm"),                                  # 48 % 32
    (dict(groups=7), "GroupNorm"),
    (dict(channels=8, channel_mult=(4, 8), groups=16), "GroupNorm"),  # the stem's 8 % 16, every level's width fits
    (dict(attention_resolutions=(12,)), "attention_resolutions"),
    (dict(head_dim=48), "head_dim"),
    (dict(num_heads=3), "num_heads"),
    (dict(noise_embedding="learned"), "noise embedding"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_res_blocks=0), "positive"),
])
def test_bad_config_raises(kw, msg):
    with pytest.raises(UndiffuseError, match=msg):
        make(**kw)


def test_bad_inputs_raise():
    net, t = make(), torch.zeros(2)
    with pytest.raises(UndiffuseError, match="not divisible"):
        net(torch.randn(2, 1, 30, 32), t)
    with pytest.raises(UndiffuseError, match="takes images"):
        net(torch.randn(2, 3, 32, 32), t)
    with pytest.raises(UndiffuseError, match="unconditional"):
        net(torch.randn(2, 1, 32, 32), t, torch.tensor([1, 2]))
    with pytest.raises(UndiffuseError, match="class labels"):
        make(num_classes=10)(torch.randn(2, 1, 32, 32), t, torch.tensor([1, 11]))
    with pytest.raises(UndiffuseError, match="noise_cond"):
        net(torch.randn(2, 1, 32, 32), torch.zeros(3))


def test_every_parameter_gets_a_gradient():
    net = perturbed(make(num_classes=3, dropout=0.1))
    x = torch.randn(3, 1, 32, 32)
    out = net(x, torch.tensor([1.0, 200.0, 900.0]), torch.tensor([0, 2, -1]))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_zero_init_still_trains():
    """Straight from init (F ≡ 0) one optimiser step makes the output non-zero."""
    net = make()
    x, t = torch.randn(4, 1, 16, 16), torch.rand(4) * 1000
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    F.mse_loss(net(x, t), torch.randn_like(x)).backward()
    opt.step()
    assert net(x, t).abs().max() > 0


def test_bf16_autocast_forward_matches_fp32():
    net = perturbed(make(attention_resolutions=(16, 8))).eval()
    x, t = torch.randn(4, 1, 32, 32), torch.rand(4) * 1000
    ref = net(x, t)
    with train_autocast(True):
        out = net(x, t)
    assert out.dtype == torch.float32
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.03, rel  # bf16 has an 8-bit mantissa: ~1 % relative error measured


def test_bf16_gradients_agree_with_fp32():
    net = perturbed(make())
    x, t, eps = torch.randn(8, 1, 16, 16), torch.rand(8) * 1000, torch.randn(8, 1, 16, 16)

    def grads(enabled):
        net.zero_grad()
        with train_autocast(enabled):
            loss = F.mse_loss(net(x, t).float(), eps)
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    assert F.cosine_similarity(grads(True), grads(False), dim=0) > 0.99


def test_attention_runs_in_fp32_under_autocast():
    q = torch.randn(2, 2, 16, 8, dtype=torch.bfloat16)
    with train_autocast(True):
        assert attention_fp32(q, q, q).dtype == torch.float32


def test_batch_independence():
    net = perturbed(make(num_classes=4, attention_resolutions=(16, 8))).eval()
    x, t, c = torch.randn(5, 1, 32, 32), torch.rand(5) * 1000, torch.tensor([0, 1, -1, 3, 2])
    full = net(x, t, c)
    for i in range(5):
        assert torch.allclose(net(x[i:i + 1], t[i:i + 1], c[i:i + 1]), full[i:i + 1], atol=1e-5)


def test_adagn_is_groupnorm_then_scale_shift():
    block = perturbed(make()).down[0][0]
    h, emb = torch.randn(3, 32, 8, 8), torch.randn(3, 128)
    scale, shift = block.emb(emb)[:, :, None, None].chunk(2, dim=1)
    ref = F.group_norm(h, 32) * (1 + scale) + shift                     # ADM's scale-shift norm
    assert torch.allclose(block.adagn(h, emb), ref, atol=1e-5)


def test_dropout_statistics_and_gradient():
    torch.manual_seed(0)
    drop = Dropout(0.1)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean() - 0.9) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # ∂y/∂x is the same scaled mask
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(1)
    a = drop.train()(x)
    torch.manual_seed(1)
    assert torch.equal(drop(x), a)  # follows torch's global seed
