"""Sampling with the network in bf16: close to fp32, the sampler's state still fp32, fp32 unchanged; "auto" picks
bf16 only where the CPU multiplies it natively."""

import pytest
from conftest import random_model
import torch

from undiffuse import samplers
from undiffuse.config import Config, DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from undiffuse.denoiser import AutocastDenoiser, with_precision
from undiffuse.errors import UndiffuseError
from undiffuse.guidance import CFGDenoiser
from undiffuse.models import LoadedModel
from undiffuse.nets import cpu
from undiffuse.nets.cpu import DEFAULT_INFERENCE_PRECISION, PRECISIONS, inference_autocast, resolve_precision
from undiffuse.train import trains_in_bf16
from undiffuse.sampling import SampleRequest, generate
from undiffuse.tasks import denoise, inpaint


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on 2 threads stall for scheduler slices on a busy machine (tests/test_unet.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """A class-conditional 8×8 U-Net with random weights (the zero-initialised layers too, so F ≠ 0)."""
    cfg = Config(data=DataConfig(name="digits", image_size=8, channels=1),
                 model=ModelConfig(channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4],
                                   dropout=0.0, num_heads=2, groups=8),
                 diffusion=DiffusionConfig(parameterization="v"))
    return random_model(cfg, ["a", "b", "c"], std=0.05)


def test_the_default_is_the_benchs_choice():
    # bench/inference_levers.py: bf16 autocast is the fastest setting whose images match fp32 where the CPU has
    # AVX512-BF16; on an AVX2-only CPU emulated bf16 is many times slower (bench/README.md)
    assert DEFAULT_INFERENCE_PRECISION == "auto" and SampleRequest().precision == "auto"
    assert set(PRECISIONS) == {"auto", "bf16", "fp32"}


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16 amx_tile", True), ("fpu sse avx2 fma", False),
                                           ("fpu avx512f avx512bw avx512_vnni", False), ("amx_bf16 amx_tile", True)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu.cpu_flags(info) == set(flags.split())
    assert cpu.cpu_flags(tmp_path / "missing") is None
    monkeypatch.setattr(cpu, "cpu_flags", lambda: set(flags.split()))
    cpu.native_bf16.cache_clear()
    try:
        assert cpu.native_bf16("cpu") is native
        assert resolve_precision("auto") == ("bf16" if native else "fp32")
        assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "fp32"  # asked for: kept
        assert trains_in_bf16(Config()) is native and not trains_in_bf16(Config(train=TrainConfig(bf16=False)))
    finally:
        cpu.native_bf16.cache_clear()


def test_auto_runs_the_network_in_the_resolved_precision(tiny):
    net_dtypes = []
    hook = tiny.denoiser.net.inp.register_forward_hook(lambda m, i, o: net_dtypes.append(o.dtype))
    try:
        generate(tiny, SampleRequest(n=2, steps=2, precision="auto"), progress=False)
    finally:
        hook.remove()
    want = torch.bfloat16 if resolve_precision("auto") == "bf16" else torch.float32
    assert net_dtypes and all(d == want for d in net_dtypes)


def test_bf16_and_fp32_sampling_agree(tiny):
    req = SampleRequest(n=6, steps=8, seed=3, guidance=2.0, precision="bf16")
    lo, _ = generate(tiny, req, progress=False)
    hi, _ = generate(tiny, SampleRequest(n=6, steps=8, seed=3, guidance=2.0, precision="fp32"), progress=False)
    assert lo.dtype == hi.dtype == torch.float32
    rel = float((lo - hi).norm() / hi.norm())   # 2.5 % for this random net at guidance 2, 8 steps
    assert 0 < rel < 0.05, rel


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "dpmpp_2m_sde"])
def test_sampler_state_stays_fp32_and_the_network_runs_in_bf16(tiny, sampler):
    seen, net_dtypes = [], []
    hook = tiny.denoiser.net.inp.register_forward_hook(lambda m, i, o: net_dtypes.append(o.dtype))
    try:
        out, _ = generate(tiny, SampleRequest(n=3, steps=4, sampler=sampler, precision="bf16"), progress=False,
                          callback=lambda i, sigma, x, x0: seen.append((x.dtype, x0.dtype)))
    finally:
        hook.remove()
    assert out.dtype == torch.float32 and len(seen) == 4
    assert all(a == b == torch.float32 for a, b in seen)
    assert net_dtypes and all(d == torch.bfloat16 for d in net_dtypes)


def test_fp32_is_bit_identical_to_the_plain_fp32_path(tiny):
    req = SampleRequest(n=5, steps=6, seed=11, guidance=2.5, precision="fp32", batch_size=3)
    out, labels = generate(tiny, req, progress=False)
    # the path before precision existed: CFG around the model's own denoiser, per-sample seeds, batches of 3
    sigmas = tiny.sigmas(6, "karras")
    d = CFGDenoiser(tiny.denoiser, 2.5)
    ref = []
    for start in (0, 3):
        idx = range(start, min(start + 3, 5))
        gens = samplers.make_generators([11 + i for i in idx])
        x = samplers.randn((len(idx), 1, 8, 8), gens) * float(sigmas[0])
        with torch.no_grad():
            ref.append(samplers.get("dpmpp_2m")(d, x, sigmas, cond=labels[start:start + len(idx)], generator=gens))
    assert torch.equal(out, torch.cat(ref))
    assert with_precision(tiny.denoiser, "fp32") is tiny.denoiser


def test_autocast_denoiser_returns_the_input_dtype(tiny):
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.5)
    with torch.no_grad():
        lo = AutocastDenoiser(tiny.denoiser, "bf16")(x, sigma, torch.tensor([0, 1]))
        hi = tiny.denoiser(x, sigma, torch.tensor([0, 1]))
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, hi, atol=0.05, rtol=0.05)
    assert not torch.equal(lo, hi)


def test_tasks_follow_the_requested_precision(tiny):
    img = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    hole = torch.zeros(8, 8)
    hole[2:6, 2:6] = 1
    outs = {p: inpaint(tiny, img, hole, SampleRequest(n=2, steps=4, label=-1, precision=p)) for p in PRECISIONS}
    keep = hole < 0.5
    for out in outs.values():
        assert out.dtype == torch.float32
        torch.testing.assert_close(out[:, :, keep], img[:, keep].expand(2, 1, -1), atol=1e-4, rtol=0)
    assert not torch.equal(outs["bf16"], outs["fp32"])
    clean = {p: denoise(tiny, img, SampleRequest(n=1, steps=4, label=-1, guidance=1.0, precision=p), sigma=0.3)[0]
             for p in PRECISIONS}
    assert (clean["bf16"] - clean["fp32"]).abs().max() < 0.1


def test_unknown_precision_is_an_explicit_error(tiny):
    with pytest.raises(UndiffuseError, match="unknown precision 'fp16'; known: auto, bf16, fp32"):
        generate(tiny, SampleRequest(n=1, steps=2, precision="fp16"), progress=False)
    with pytest.raises(UndiffuseError, match="unknown precision"):
        with inference_autocast("half"):
            pass


def test_cli_precision_option(tmp_path, capsys):
    from undiffuse.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--n", "1", "--steps", "1", "--precision", "fp16", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "unknown precision 'fp16'" in capsys.readouterr().err
