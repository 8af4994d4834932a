"""The Diffusion Transformer: shapes, zero/identity init, conditioning, errors, gradients, bf16 autocast."""

import pytest
import torch

from undiffuse.config import load_config
from undiffuse.errors import UndiffuseError
from undiffuse.models import build_net
from undiffuse.nets.cpu import train_autocast
from undiffuse.nets.dit import DIT_SIZES, DiT, JointAttention, JointBlock, dit_size, sincos_2d


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(width=64, depth=2, heads=2, image_size=8)  # a tiny net: every test well under a second


def perturbed(net: DiT, scale: float = 0.05, seed: int = 0) -> DiT:
    """Add noise to every weight: the zero-initialised layers otherwise make F ≡ 0 and hide the rest."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def make(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(**{**SMALL, **kw})


def text_cond(batch: int, length: int = 5, dim: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, length - 2:] = False                                        # the last two tokens are padding
    return {"tokens": torch.randn(batch, length, dim, generator=g), "mask": mask,
            "pooled": torch.randn(batch, dim, generator=g)}


@pytest.mark.parametrize("in_ch, size, patch", [(1, 8, 1), (4, 8, 2), (3, 16, 4), (4, 12, 2)])
def test_output_shape_and_zero_at_init(in_ch, size, patch):
    net = make(in_channels=in_ch, image_size=size, patch_size=patch)
    x = torch.randn(2, in_ch, size, size)
    out = net(x, torch.tensor([3.0, 700.0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(out))                      # zero final layer: F starts as 0


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_non_square_inputs_and_out_channels(patch):
    net = perturbed(make(in_channels=3, out_channels=6, patch_size=patch, noise_embedding="fourier"))
    for h, w in [(8, 12), (4, 16)]:
        out = net(torch.randn(2, 3, h, w), torch.randn(2))
        assert out.shape == (2, 6, h, w) and torch.isfinite(out).all()
    assert net(torch.randn(2, 3, 8, 8), torch.tensor(0.5)).shape == (2, 6, 8, 8)  # scalar noise level


def test_unpatchify_inverts_the_token_layout():
    net = make(in_channels=3, patch_size=2)
    x = torch.randn(2, 3, 4, 6)
    tokens = x.reshape(2, 3, 2, 2, 3, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, 12)  # (B, N, p·p·C)
    assert torch.equal(net.unpatchify(tokens, 2, 3), x)


def test_position_embeddings():
    pe = sincos_2d(3, 5, 16)
    assert pe.shape == (15, 16)
    assert torch.equal(pe[:5, :8], pe[:1, :8].expand(5, 8))             # first half: the row only
    assert torch.equal(pe[::5, 8:], pe[:1, 8:].expand(3, 8))            # second half: the column only
    assert torch.cdist(pe, pe).add(torch.eye(15)).min() > 0.1           # every position distinct
    assert not any("pos" in k or "sincos" in k for k in make().state_dict())  # not saved


def test_every_block_is_the_identity_at_init():
    net = make(context_dim=16)
    x, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    for block in net.blocks:
        assert torch.equal(block(x, c, text_cond(2)), x)
    assert not torch.equal(perturbed(net).blocks[0](x, c, text_cond(2)), x)   # a real residual once trained


def test_both_noise_embeddings_use_the_noise_level():
    for kind, levels in [("positional", (3.0, 700.0)), ("fourier", (-1.0, 1.0))]:
        net = perturbed(make(noise_embedding=kind)).eval()
        x = torch.randn(1, 4, 8, 8)
        a, b = (net(x, torch.tensor([t])) for t in levels)
        assert (a - b).abs().max() > 1e-3, kind


def test_class_conditioning_and_null_label():
    net = perturbed(make(num_classes=10)).eval()
    x, t = torch.randn(4, 4, 8, 8), torch.full((4,), 500.0)
    a = net(x, t, torch.tensor([0, 1, 2, 3]))
    b = net(x, t, torch.tensor([4, 5, 6, 7]))
    assert (a - b).abs().max() > 1e-3                                   # the label matters
    none = net(x, t, None)
    assert torch.allclose(net(x, t, torch.full((4,), -1)), none, atol=1e-6)   # -1 is "no class"
    mixed = net(x, t, torch.tensor([0, -1, 2, -1]))
    assert torch.allclose(mixed[[0, 2]], a[[0, 2]], atol=1e-5)
    assert torch.allclose(mixed[[1, 3]], none[[1, 3]], atol=1e-5)


def test_batch_independence():
    net = perturbed(make(num_classes=4)).eval()
    x, t, c = torch.randn(5, 4, 8, 8), torch.rand(5) * 1000, torch.tensor([0, 1, -1, 3, 2])
    full = net(x, t, c)
    for i in range(5):
        assert torch.allclose(net(x[i:i + 1], t[i:i + 1], c[i:i + 1]), full[i:i + 1], atol=1e-5)


@pytest.mark.parametrize("kw, cond", [(dict(num_classes=3, dropout=0.1), torch.tensor([0, 2, -1])),
                                      (dict(context_dim=16), text_cond(3)),
                                      (dict(context_dim=16, text_attention="joint", dropout=0.1), text_cond(3))])
def test_every_parameter_gets_a_gradient(kw, cond):
    net = perturbed(make(**kw))
    out = net(torch.randn(3, 4, 8, 8), torch.tensor([1.0, 200.0, 900.0]), cond)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_bf16_autocast_forward(text_attention):
    net = perturbed(make(context_dim=16, text_attention=text_attention)).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2) * 1000
    ref = net(x, t, text_cond(2))
    with train_autocast(True):
        out = net(x, t, text_cond(2))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 0.05


def test_sizes():
    assert dit_size("S") == dict(depth=12, width=384, heads=6)
    for name, size in DIT_SIZES.items():
        assert size["width"] // size["heads"] == 64, name
    with pytest.raises(UndiffuseError, match="unknown DiT size 'L'.*XS"):
        dit_size("L")
    with torch.device("meta"):                                          # counts without allocating
        n = sum(p.numel() for p in DiT(in_channels=4, patch_size=2, image_size=32, **dit_size("S")).parameters())
    assert 25e6 < n < 40e6, n                                           # DiT-S/2: ~33 M


@pytest.mark.parametrize("kw, msg", [
    (dict(image_size=9), "image_size 9 is not divisible by patch_size 2"),
    (dict(width=66, heads=4), "width 66 is not divisible by heads 4"),
    (dict(width=6, heads=3), "divisible by 4"),
    (dict(depth=0), "positive"),
    (dict(num_classes=3, context_dim=8), "not both"),
    (dict(noise_embedding="learned"), "noise embedding"),
    (dict(dropout=1.0), "dropout"),
    (dict(text_attention="self"), "unknown text_attention 'self'; known: cross, joint"),
    (dict(text_attention="joint"), "needs text tokens"),
])
def test_bad_config_raises(kw, msg):
    with pytest.raises(UndiffuseError, match=msg) as err:
        make(**kw)
    assert "\n" not in str(err.value)


def test_bad_inputs_raise():
    net, t = make(), torch.zeros(2)
    with pytest.raises(UndiffuseError, match="not divisible by the patch size 2"):
        net(torch.randn(2, 4, 7, 8), t)
    with pytest.raises(UndiffuseError, match="takes images"):
        net(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(UndiffuseError, match="noise_cond"):
        net(torch.randn(2, 4, 8, 8), torch.zeros(3))
    with pytest.raises(UndiffuseError, match="unconditional"):
        net(torch.randn(2, 4, 8, 8), t, torch.tensor([1, 2]))
    classes = make(num_classes=10)
    for bad in [text_cond(2), torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3])]:
        with pytest.raises(UndiffuseError, match="class-conditioned"):
            classes(torch.randn(2, 4, 8, 8), t, bad)
    with pytest.raises(UndiffuseError, match="class labels"):
        classes(torch.randn(2, 4, 8, 8), t, torch.tensor([1, 11]))
    text = make(context_dim=16)
    with pytest.raises(UndiffuseError, match="text-conditioned"):
        text(torch.randn(2, 4, 8, 8), t, torch.tensor([1, 2]))
    with pytest.raises(UndiffuseError, match="needs tokens"):
        text(torch.randn(2, 4, 8, 8), t, text_cond(2, dim=8))


def test_short_attention_matches_sdpa_with_and_without_padding():
    from undiffuse.nets.cpu import attention_fp32, attention_short
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 16, generator=g) > 0.3
    mask[:, 0] = True
    for m in (None, mask):
        assert torch.allclose(attention_short(q, k, v, m), attention_fp32(q, k, v, m), atol=1e-5)


# --------------------------------------------------------------------------- joint attention (SD3 MM-DiT)
def joint(**kw) -> DiT:
    return make(context_dim=16, text_attention="joint", **kw)


@pytest.mark.parametrize("patch", [1, 2])
def test_joint_shapes_and_zero_at_init(patch):
    net = joint(patch_size=patch)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0])
    out = net(x, t, text_cond(2))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # F ≡ 0 at init
    net = perturbed(net)
    for h, w in [(8, 8), (4, 12)]:
        out = net(torch.randn(2, 4, h, w), t, text_cond(2, length=7))
        assert out.shape == (2, 4, h, w) and torch.isfinite(out).all()


def test_joint_blocks_are_the_identity_on_image_tokens_at_init():
    net = joint()
    assert all(isinstance(b, JointBlock) for b in net.blocks)
    x, y, c = torch.randn(2, 16, 64), torch.randn(2, 5, 64), torch.randn(2, 64)
    mask = text_cond(2)["mask"]
    for i, block in enumerate(net.blocks):
        x_out, y_out = block(x, y, c, mask)
        assert torch.equal(x_out, x), i
        last = i == len(net.blocks) - 1
        assert y_out is None if last else torch.equal(y_out, y), i        # the text stream is adaLN-Zero too
    assert net.blocks[-1].text_mlp is None and net.blocks[-1].attn.text_proj is None  # SD3: last block's text unused
    x_out, y_out = perturbed(net).blocks[0](x, y, c, mask)
    assert not torch.equal(x_out, x) and not torch.equal(y_out, y)      # real residuals once trained


@pytest.mark.parametrize("kind", ["cross", "joint"])
def test_text_conditioning_and_padding_mask(kind):
    net = perturbed(make(context_dim=16, text_attention=kind)).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.full((2,), 300.0)
    cond = text_cond(2)
    ref = net(x, t, cond)
    other_tokens = {**cond, "tokens": text_cond(2, seed=1)["tokens"]}
    assert (net(x, t, other_tokens) - ref).abs().max() > 1e-3           # the tokens matter
    first_only = cond["tokens"].clone()
    first_only[:, 0] += 1.0
    assert (net(x, t, {**cond, "tokens": first_only}) - ref).abs().max() > 1e-3  # each real token does
    other_pooled = {**cond, "pooled": text_cond(2, seed=1)["pooled"]}
    assert (net(x, t, other_pooled) - ref).abs().max() > 1e-3           # so does the pooled embedding
    padded = cond["tokens"].clone()
    padded[:, -2:] = 100 * torch.randn(2, 2, 16)                        # change only the masked-out tokens
    assert torch.allclose(net(x, t, {**cond, "tokens": padded}), ref, atol=1e-6)
    assert torch.allclose(net(x, t, {**cond, "mask": cond["mask"].long()}), ref, atol=1e-6)  # 0/1 masks too
    if kind == "joint":  # all padding: the image keys remain
        assert torch.isfinite(net(x, t, {**cond, "mask": torch.zeros_like(cond["mask"])})).all()


def test_joint_batch_independence_with_different_padding():
    net = perturbed(joint()).eval()
    x, t, cond = torch.randn(3, 4, 8, 8), torch.rand(3) * 1000, text_cond(3, length=6)
    cond["mask"] = torch.arange(6)[None] < torch.tensor([[2], [6], [4]])
    full = net(x, t, cond)
    for i in range(3):
        one = net(x[i:i + 1], t[i:i + 1], {k: v[i:i + 1] for k, v in cond.items()})
        assert torch.allclose(one, full[i:i + 1], atol=1e-5), i
        n = int(cond["mask"][i].sum())                                  # the same prompt without its padding
        short = {"tokens": cond["tokens"][i:i + 1, :n], "mask": cond["mask"][i:i + 1, :n],
                 "pooled": cond["pooled"][i:i + 1]}
        assert torch.allclose(net(x[i:i + 1], t[i:i + 1], short), full[i:i + 1], atol=1e-5), i


def test_last_joint_attention_is_the_image_rows_of_the_full_one():
    torch.manual_seed(0)
    full, last = JointAttention(32, 2, text_out=True), JointAttention(32, 2, text_out=False)
    with torch.no_grad():
        last.qkv.load_state_dict(full.qkv.state_dict())
        last.proj.load_state_dict(full.proj.state_dict())
        last.text_qkv.weight.copy_(full.text_qkv.weight[32:])            # the text keys and values, not its queries
        last.text_qkv.bias.copy_(full.text_qkv.bias[32:])
    x, y, mask = torch.randn(2, 9, 32), torch.randn(2, 5, 32), text_cond(2)["mask"]
    (a, a_text), (b, b_text) = full(x, y, mask), last(x, y, mask)
    assert a_text.shape == y.shape and b_text is None
    assert torch.allclose(a, b, atol=1e-6)


def test_cross_and_joint_state_dicts_do_not_mix():
    cross, jnt = make(context_dim=16), joint()
    assert not any(".text_" in k or "token_embed" in k for k in cross.state_dict())  # cross keys as before
    assert "token_embed.weight" in jnt.state_dict() and "blocks.0.attn.text_qkv.weight" in jnt.state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        jnt.load_state_dict(cross.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        cross.load_state_dict(jnt.state_dict())
    joint().load_state_dict(jnt.state_dict())                           # round trip within a kind


def test_config_text_attention_builds_and_refuses():
    dit = ["model.backbone='dit'", "model.dit_size='T'"]
    text = ["data.name='emoji'", "data.image_size=16", "data.channels=3"]
    assert load_config(None, dit + text).model.text_attention == "cross"
    cfg = load_config(None, dit + text + ["model.text_attention='joint'"])
    net = build_net(cfg, 0, context_dim=16, shape=(4, 8, 8))
    assert net.text_attention == "joint" and isinstance(net.blocks[0], JointBlock)
    for overrides, msg in [(dit + text + ["model.text_attention='self'"],
                            "model.text_attention must be cross or joint, got 'self'"),
                           (dit + ["model.text_attention='joint'"], "'joint' needs text"),
                           (dit + text + ["data.conditional=false", "model.text_attention='joint'"],
                            "'joint' needs text"),
                           (text + ["model.text_attention='joint'"], "needs model.backbone = 'dit', got 'unet'")]:
        with pytest.raises(UndiffuseError, match=msg) as err:
            load_config(None, overrides)
        assert "\n" not in str(err.value), overrides
