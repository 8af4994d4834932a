"""The explain page's deeper sections against theory: levels and their table of contents, DDIM inversion of a real
image, slerp between seeds, per-pixel noise against splats, and the reverse step split into its parts."""

import math

import pytest
import torch

from undiffuse.explain.encoding import (RECONSTRUCTION_BOUND, ddim_invert, encode_and_decode, interpolate,
                                        model_image, slerp)
from undiffuse.analytic import GaussianDenoiser
from undiffuse.explain.maths import ORDER_SAMPLERS, flow_path, sampler_order
from undiffuse.process import sigmas_karras
from undiffuse.samplers import make_generators, randn
from undiffuse.explain.page import LEVELS, Section, render
from undiffuse.explain.prompt import AttentionRecorder, _card_refines, guided_steps, prompt_words
from undiffuse.explain.pixels import autocorrelation, per_pixel, splat_noise
from undiffuse.explain.reverse_steps import SAMPLERS, step_parts
from undiffuse.models import load_model
from undiffuse.process import posterior
from undiffuse.sampling import generate
from undiffuse.explain.reverse import card_guidance_words, request


@pytest.fixture(scope="module")
def fashion():
    """The shipped Fashion-MNIST model (its exact numbers may change when it is retrained: only bounds are tested)."""
    return load_model("fashion-mnist")


def test_sections_are_ordered_by_level_with_a_table_of_contents():
    sections = [Section("b", "Four", ["x"], level=4), Section("a", "One", ["y"], level=1),
                Section("c", "Four again", ["z"], level=4)]
    html = render("t", "intro", sections, "foot")
    assert html.index('id="a"') < html.index('id="b"') < html.index('id="c"')   # by level, stable within one
    toc = html[html.index('<nav id="toc">'):html.index("</nav>")]
    assert f"Level 1: {LEVELS[1]}" in toc and f"Level 4: {LEVELS[4]}" in toc and "Level 2" not in toc
    assert toc.index('href="#a"') < toc.index('href="#level-4"') < toc.index('href="#b"') < toc.index('href="#c"')
    assert html.count('class="level-head"') == 2 and '<section id="b" data-level="4">' in html
    with pytest.raises(ValueError, match="level"):
        Section("d", "Six", [], level=6)


def test_slerp_keeps_the_ends_and_the_shell():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(1, 1, 32, 32, generator=g), torch.randn(1, 1, 32, 32, generator=g)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-5) and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-5)
    d = math.sqrt(z0.numel())
    for t in (0.25, 0.5, 0.75):   # two independent draws are nearly orthogonal: the path keeps ‖z‖ ≈ √d
        assert float(slerp(z0, z1, t).norm()) / d == pytest.approx(1.0, abs=0.06)
    assert float(((z0 + z1) / 2).norm()) / d == pytest.approx(math.sqrt(0.5), abs=0.06)   # the line's midpoint


def test_ddim_inversion_of_gaussian_data_follows_the_exact_ode():
    """For data N(0, s²) the exact denoiser is x s²/(σ²+s²) and the ODE's solution x(σ) = x₀ √((σ²+s²)/s²)."""
    s = 0.5
    denoiser = lambda x, sigma, cond=None: x * s**2 / (sigma.reshape(-1, 1, 1, 1) ** 2 + s**2)  # noqa: E731
    sigmas = torch.cat([torch.logspace(math.log10(80.0), -3, 400, dtype=torch.float64), torch.zeros(1)])
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * s
    x_top = ddim_invert(denoiser, x0, sigmas)
    expected = x0 * math.sqrt((80.0**2 + s**2) / s**2)
    assert torch.allclose(x_top, expected, rtol=0.02)


def test_ddim_inversion_reconstructs_a_real_test_image(fashion):
    image, label, note = model_image(fashion, torch.zeros(1, 32, 32))
    assert "test image" in note and image.shape == (1, 32, 32)
    enc = encode_and_decode(fashion, image, label, seed=0)
    n = enc.numbers
    assert n["reconstruction_rms"] < RECONSTRUCTION_BOUND                 # the page's stated bound
    assert n["reconstruction_rms"] < n["fresh_rms"] / 5                   # far below another seed's image
    assert n["perturbed_rms"] < n["fresh_rms"] / 2                        # a nearby noise: a nearby image
    assert min(n["ddpm_rms"]) > 2 * n["reconstruction_rms"]               # the stochastic sampler does not decode it
    assert abs(n["noise_neighbour_correlation"]) < 0.2 and 0.3 < n["noise_std"] < 1.5   # noise-like


def test_slerp_endpoints_are_the_seeds_own_images(fashion):
    res = interpolate(fashion, (3, 4), label=2, points=5, steps=10)
    for end, seed in ((res.slerp[0], 3), (res.slerp[-1], 4)):
        own, _ = generate(fashion, request(fashion, n=1, seed=seed, label=2, sampler="ddim", steps=10,
                                           grid="trailing"), progress=False)
        assert torch.allclose(end, own[0], atol=1e-4)
    assert torch.allclose(res.ends, torch.stack([res.slerp[0], res.slerp[-1]]), atol=1e-4)
    assert max(res.slerp_norms) - min(res.slerp_norms) < 0.05 and min(res.lerp_norms) < 0.8


@pytest.mark.parametrize("k", [2, 3, 4])
def test_splat_noise_correlation_matches_theory(k):
    splat = splat_noise((64, 1, 16, 16), k=k, generator=torch.Generator().manual_seed(k))
    acf = autocorrelation(splat, lags=2)
    assert float(splat.std()) == pytest.approx(1.0, abs=0.03)
    assert float(acf[2, 3]) == pytest.approx((k - 1) / k, abs=0.03)        # neighbours share k(k-1) of k² draws
    assert float(acf[2, 2 + min(k, 2)]) == pytest.approx(max(k - 2, 0) / k, abs=0.03)


def test_forward_noise_is_per_pixel_and_touches_every_pixel_every_step():
    x0 = torch.rand(1, 12, 12) * 2 - 1
    res = per_pixel(x0, t=100, seed=2)
    n = res.numbers
    assert abs(n["neighbour_correlation"]) < 0.01 and abs(n["vertical_correlation"]) < 0.01
    assert n["max_off_centre"] < 0.02 and n["eps_std"] == pytest.approx(1.0, abs=0.01)
    assert n["splat_neighbour_correlation"] == pytest.approx(n["splat_expected"], abs=0.02)
    assert n["changed_min"] == n["changed_max"] == 144 and n["changed_total"] == 144 * n["steps"]
    assert res.eps.shape == x0.shape and float(res.eps_acf[3, 3]) == pytest.approx(1.0, abs=1e-4)


def test_reverse_step_parts_add_up_for_ddpm_and_ddim(fashion):
    ddpm, ddim = (step_parts(fashion, s, seed=0, label=0, steps=10) for s in SAMPLERS)
    assert torch.equal(ddpm.x[0], ddim.x[0])                                  # the same starting noise
    assert float(ddim.fresh.abs().max()) < 1e-4                               # DDIM: a·x̂₀ + b·ε̂ is the whole step
    zs = torch.stack([p / c["s"] for p, c in zip(ddpm.fresh, ddpm.coeffs, strict=True) if c["s"] > 0])
    assert len(zs) == 9 and abs(float(zs.mean())) < 0.05 and float(zs.std()) == pytest.approx(1.0, abs=0.05)
    for parts in (ddpm, ddim):
        for c in parts.coeffs:
            assert c["b"] ** 2 + c["s"] ** 2 == pytest.approx(1 - c["alpha_bar_prev"], abs=1e-9)
    for c in ddpm.coeffs[:-1]:   # DDPM's s² is the posterior variance β̃ (Ho et al. 2020, eq. 7)
        _, var = posterior(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                           c["alpha_bar"], c["alpha_bar_prev"])
        assert c["s"] ** 2 == pytest.approx(float(var), rel=1e-9)


def test_sampler_order_measured_on_the_model(fashion):
    fit = sampler_order(fashion, label=1, seed=5, n=1, steps=(10, 20, 40), reference=120)
    assert set(fit.order) == set(ORDER_SAMPLERS)
    # Euler on the probability-flow ODE: first order, approached from below at 10-40 steps (0.69 measured here)
    assert 0.6 < fit.order["ddim"] < 1.3
    assert fit.order["dpmpp_2m"] > 1.5                          # second order (Lu et al. 2022)
    assert all(a > b for e in fit.errors.values() for a, b in zip(e, e[1:]))   # more steps, less error


def test_ode_and_sde_paths_keep_the_gaussian_marginals():
    """For data N(0, s²) both the probability-flow ODE and the reverse SDE from the same noises end at N(0, s²);
    the ODE's sample is a function of its noise (x(0) = x(σ_max) s/√(σ_max² + s²)), the SDE's is not."""
    s, n = 0.5, 2000
    D = GaussianDenoiser(0.0, s)
    sigmas = sigmas_karras(100, 0.002, 80.0)
    start = randn((n, 1, 1, 1), make_generators(range(n))) * 80.0
    ode = flow_path(D, start, sigmas, None, "ode", make_generators(range(n, 2 * n)))
    sde = flow_path(D, start, sigmas, None, "sde", make_generators(range(n, 2 * n)))
    assert ode.shape == sde.shape == (101, n, 1, 1, 1)
    assert float(ode[0].std()) == pytest.approx(1.0, abs=0.05)          # the first state at VP scale: ~N(0, 1)
    for path in (ode, sde):
        assert float(path[-1].std()) == pytest.approx(s, rel=0.06) and abs(float(path[-1].mean())) < 0.05
    exact = start * s / math.sqrt(80.0**2 + s**2)
    assert torch.allclose(ode[-1], exact, rtol=0.05, atol=1e-3)         # Euler, first order: a few % at 100 steps
    assert float((sde[-1] - exact).pow(2).mean().sqrt()) > 0.5 * s      # the SDE's noise decides much of its end
    jitter = {k: float(p[:-1].diff(n=2, dim=0).abs().mean()) for k, p in (("ode", ode), ("sde", sde))}
    assert jitter["sde"] > 5 * jitter["ode"]                           # the SDE's path jitters, the ODE's is smooth


def test_the_prompt_steers_through_guidance_and_cross_attention():
    emoji = load_model("emoji-dit")
    assert [w for w, _ in prompt_words(emoji, "a red heart")] == ["red", "heart"]
    assert [w for w, _ in prompt_words(emoji, "an umbrella")] == ["umbrella"]     # word pieces joined
    recorder = AttentionRecorder(emoji.denoiser.net)
    try:
        g, maps = guided_steps(emoji, "a red heart", seed=0, shown=3, recorder=recorder)
    finally:
        recorder.close()
    assert len(g.sigmas) == len(maps) == 3 and g.guided.shape == (3, 3, 64, 64)
    assert g.mix_error < 1e-4                       # D(∅) + w (D(prompt) - D(∅)) is what the sampler followed
    assert g.direction[0] > 10 * g.direction[-1]    # the prompt pulls hard early, hardly at the end
    mask = emoji.text_encoder()(["a red heart"]).mask[0]
    for m in maps:                                  # each patch's attention: a distribution over the real tokens
        assert m.shape == (64, len(mask))
        assert torch.allclose(m.sum(-1), torch.ones(64), atol=1e-4) and float(m[:, ~mask].abs().max()) == 0
    assert all(not layer._forward_hooks for layer in recorder.layers)
    # a card that guides in an interval, projected, with ε scaling: the picture still shows plain CFG, exactly
    card = emoji.config.sample
    saved = (card.guidance_interval, card.guidance_parallel, card.eps_scale, card.steps)
    card.guidance_interval, card.guidance_parallel, card.eps_scale, card.steps = [0.5, 3.0], 0.0, 1.01, 6
    try:
        g, _ = guided_steps(emoji, "a red heart", seed=0, shown=3)
        refined = _card_refines(emoji)
    finally:
        card.guidance_interval, card.guidance_parallel, card.eps_scale, card.steps = saved
    assert g.mix_error < 1e-4
    assert "model card's own samples refine" in refined   # and the page says the card's samples differ
    assert _card_refines(emoji) == ""                # the shipped text card guides plainly: nothing to add


def test_the_page_samples_as_the_card_and_says_how_it_guides(fashion):
    card = fashion.config.sample
    req = request(fashion, seed=5)
    assert (req.n, req.seed, req.sampler, req.steps, req.grid) == (1, 5, card.sampler, card.steps, card.grid)
    assert req.guidance_interval == tuple(card.guidance_interval) and req.eps_scale == card.eps_scale
    assert req.guidance_parallel == card.guidance_parallel
    assert request(fashion, guidance_interval=(0.0, math.inf)).guidance_interval == (0.0, math.inf)  # kw win
    words = card_guidance_words(fashion)
    lo, hi = card.guidance_interval
    assert f"w = {card.guidance:g}" in words and f"[{lo:g}, {hi:g}]" in words and f"{card.eps_scale:g}" in words
