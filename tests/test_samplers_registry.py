"""One suite over the whole sampler registry: a newly registered sampler is tested with no new code."""

import pytest
import torch

from undiffuse import samplers
from undiffuse.analytic import GaussianDenoiser
from undiffuse.errors import UndiffuseError
from undiffuse.process import sigmas_karras

NAMES = samplers.names()
SIGMAS = sigmas_karras(6, 0.01, 20.0)
EXACT = GaussianDenoiser(0.3, 0.7)  # elementwise, so batch composition cannot leak in


def run(name, x, seeds=None, denoiser=EXACT, **kw):
    gens = samplers.make_generators(seeds) if seeds is not None else None
    return samplers.get(name)(denoiser, x, SIGMAS, generator=gens, **kw)


def start(seeds, shape=(2,), dtype=torch.float32):
    return samplers.randn((len(seeds), *shape), samplers.make_generators([s + 1000 for s in seeds]), dtype) * 20


def test_registry_lists_every_required_sampler():
    required = {"ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde",
                "dpmpp_3m_sde", "unipc", "lms", "adaptive"}
    assert required <= set(NAMES)
    for name in NAMES:
        info = samplers.info(name)
        assert info.summary and info.fn is samplers.get(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2,), (1, 4, 4), (1, 16), (3, 2, 2, 2)], ids=["points", "image", "audio", "video"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_finiteness(name, shape, dtype):
    x = start([0, 1, 2], shape, dtype)
    out = run(name, x, [0, 1, 2])
    assert out.shape == x.shape and out.dtype == dtype and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed_and_seed_matters(name):
    x = start([0, 1, 2])
    a, b = run(name, x.clone(), [5, 6, 7]), run(name, x.clone(), [5, 6, 7])
    assert torch.equal(a, b)
    c = run(name, x.clone(), [8, 9, 10])
    if samplers.info(name).stochastic:
        assert not torch.allclose(a, c)  # fresh noise depends on the seed
    else:
        assert torch.equal(a, c)  # an ODE solver ignores the generator


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    """Sample i depends only on its own seed: alone, or in a batch in another order, it is the same."""
    seeds = [11, 12, 13, 14]
    x = start(seeds, (1, 3, 3))
    together = run(name, x, seeds)
    for i, s in enumerate(seeds):
        alone = run(name, x[i:i + 1], [s])
        assert torch.allclose(alone[0], together[i], atol=1e-6, rtol=1e-6), f"sample {i}"
    perm = [2, 0, 3, 1]
    shuffled = run(name, x[perm], [seeds[p] for p in perm])
    assert torch.allclose(shuffled, together[perm], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_one_callback_per_step(name):
    calls, info = [], {}
    x = start([0, 1])
    opts = {"info": info} if samplers.info(name).adaptive else {}
    run(name, x, [0, 1], callback=lambda i, s, xi, x0: calls.append((i, s, xi.shape, x0.shape)), **opts)
    expected = info["steps"] if samplers.info(name).adaptive else len(SIGMAS) - 1
    assert [c[0] for c in calls] == list(range(expected))
    assert all(c[2] == x.shape and c[3] == x.shape for c in calls)
    if not samplers.info(name).adaptive:  # σ's follow the grid (heun may raise σ by churn: off by default)
        assert [float(c[1]) for c in calls] == pytest.approx(SIGMAS[:-1].tolist())


@pytest.mark.parametrize("name", NAMES)
def test_does_not_modify_its_input(name):
    x = start([0, 1])
    before = x.clone()
    run(name, x, [0, 1])
    assert torch.equal(x, before)


def test_adaptive_reports_evaluations():
    info = {}
    run("adaptive", start([0, 1, 2]), [0, 1, 2], info=info)
    assert info["nfe"] >= 4 and len(info["nfe_per_sample"]) == 3
    # three evaluations per attempted step, plus the final x̂0 at σ_min
    assert all(n >= 4 and (n - 1) % 3 == 0 for n in info["nfe_per_sample"])


# --------------------------------------------------------------------------- clear errors
def test_unknown_sampler_lists_known():
    with pytest.raises(UndiffuseError, match="unknown sampler 'eulr'; known: .*euler.*dpmpp_2m"):
        samplers.get("eulr")


@pytest.mark.parametrize("name", NAMES)
def test_bad_sigma_grids(name):
    x = start([0])
    f = samplers.get(name)
    with pytest.raises(UndiffuseError, match="strictly decreasing"):
        f(EXACT, x, [1.0, 2.0, 0.0])
    with pytest.raises(UndiffuseError, match="must end at 0"):
        f(EXACT, x, [2.0, 1.0])


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    f = samplers.get(name)
    with pytest.raises(UndiffuseError, match="floating-point"):
        f(EXACT, torch.ones(2, 2, dtype=torch.long), SIGMAS)
    with pytest.raises(UndiffuseError, match="3 generators for a batch of 2"):
        f(EXACT, start([0, 1]), SIGMAS, generator=samplers.make_generators([1, 2, 3]))
    with pytest.raises(UndiffuseError, match="returned .*1, 2.* for an input of shape .*2, 2"):
        f(lambda x, s, cond=None: x[:1], start([0, 1]), SIGMAS)
    with pytest.raises(UndiffuseError, match="returned dtype torch.float64 for an input of dtype torch.float32"):
        f(lambda x, s, cond=None: x.double(), start([0, 1]), SIGMAS)
    with pytest.raises(UndiffuseError, match="has no option bogus"):
        f(EXACT, start([0, 1]), SIGMAS, bogus=1)


def test_cond_is_passed_to_the_denoiser():
    seen = []
    def D(x, sigma, cond=None):
        seen.append(cond)
        assert sigma.shape == (x.shape[0],)
        return x * 0
    samplers.get("euler")(D, start([0, 1]), SIGMAS, cond={"label": 3})
    assert seen and all(c == {"label": 3} for c in seen)


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_passes_each_sample_its_own_condition(name):
    """A denoiser whose x̂0 is the sample's label: every sampler must end at each row's own label
    (the adaptive one evaluates subsets of the batch, so its condition must be subset with them)."""
    def denoiser(x, sigma, cond=None):
        return cond.to(x.dtype).reshape(-1, 1).expand_as(x).clone()

    cond = torch.tensor([0, 3, 7, 1, 5])
    gens = samplers.make_generators(range(5))
    x = samplers.randn((5, 2), gens) * 80.0
    out = samplers.get(name)(denoiser, x, sigmas_karras(8, 0.002, 80.0), cond=cond, generator=gens)
    torch.testing.assert_close(out, cond.float().reshape(-1, 1).expand(5, 2), atol=1e-3, rtol=0)
