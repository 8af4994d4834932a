"""Likelihoods: the DDPM bound and the probability-flow ODE against densities known in closed form."""

import math

import pytest
import torch

from undiffuse.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from undiffuse.denoiser import EDMDenoiser, VPDenoiser
from undiffuse.errors import UndiffuseError
from undiffuse.evaluation.likelihood import (_term_nats, vlb_terms, exact_nll, ode_bits_per_dim, ode_log_likelihood,
                                             vlb_bits_per_dim)
from undiffuse.process import DiscreteSchedule

SIGMA_MIN, SIGMA_MAX = 1e-3, 100.0
GAUSS = GaussianDenoiser(torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.5]))
MIXTURE = GaussianMixtureDenoiser(means=torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]]),
                                  stds=torch.tensor([0.5, 0.8, 0.4]), weights=torch.tensor([0.5, 0.3, 0.2]))
S = 0.3            # std of the 8-bit Gaussian "images"
BIN = 2 / 255      # one 8-bit level in [-1, 1]
LINEAR = DiscreteSchedule.from_name("linear", 1000)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def discretised_gaussian(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n "images" of d i.i.d. N(0, S²) pixels rounded to 8 bits, and each image's true -log P, by bin integration."""
    x = (torch.randn(n, d, generator=gen(seed), dtype=torch.float64) * S + 1) * 127.5
    x0 = x.round().clamp(0, 255) / 127.5 - 1
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(S, dtype=torch.float64))
    lo = torch.where(x0 <= -1, torch.tensor(-math.inf, dtype=torch.float64), x0 - BIN / 2)
    hi = torch.where(x0 >= 1, torch.tensor(math.inf, dtype=torch.float64), x0 + BIN / 2)
    return x0, -(normal.cdf(hi) - normal.cdf(lo)).log().sum(1)


# --------------------------------------------------------------------------- the probability-flow ODE
def test_ode_exact_trace_matches_gaussian_density_pointwise():
    """Exact denoiser of N(μ, diag(s²)): log p from the ODE equals log N(x; μ, s² + σ_min²) at every point."""
    x = GAUSS.sample((64, 2), gen(0))
    truth = GAUSS.log_density(x, SIGMA_MIN)
    exact_prior = ode_log_likelihood(GAUSS, x, SIGMA_MIN, SIGMA_MAX, trace="exact",
                                     log_prior=lambda y: GAUSS.log_density(y, SIGMA_MAX))
    assert float((exact_prior - truth).abs().max()) < 1e-3  # adaptive RK45 at rtol = atol = 1e-5
    # The default prior N(0, σ_max² I) ignores the data's mean and variance: O(|x||μ|/σ_max²) per point.
    rk4 = ode_log_likelihood(GAUSS, x, SIGMA_MIN, SIGMA_MAX, trace="exact", steps=60)
    assert float((rk4 - truth).abs().max()) < 0.05
    assert float((rk4 - truth).abs().mean()) < 0.02


def test_ode_hutchinson_on_gaussian():
    """Rademacher probes are exact for a diagonal Jacobian (εᵢ² = 1); Gaussian ones are right on average."""
    x = GAUSS.sample((256, 2), gen(1))
    truth = GAUSS.log_density(x, SIGMA_MIN)
    prior = lambda y: GAUSS.log_density(y, SIGMA_MAX)  # noqa: E731
    rademacher = ode_log_likelihood(GAUSS, x[:32], SIGMA_MIN, SIGMA_MAX, log_prior=prior, steps=60, generator=gen(2))
    assert float((rademacher - truth[:32]).abs().max()) < 2e-3
    gaussian = ode_log_likelihood(GAUSS, x, SIGMA_MIN, SIGMA_MAX, probe="gaussian", probes=16, log_prior=prior,
                                  steps=60, generator=gen(3))
    err = gaussian - truth
    assert float(err.abs().mean()) > 0.05  # the estimate is noisy point by point …
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(len(err))  # … and unbiased


def test_ode_mixture_tracks_true_density():
    """A 2-D Gaussian mixture: the ODE log-density with the exact denoiser follows the closed form."""
    x, _ = MIXTURE.sample(200, gen(4))
    truth = MIXTURE.log_density(x, SIGMA_MIN)
    model = ode_log_likelihood(MIXTURE, x, SIGMA_MIN, SIGMA_MAX, trace="exact")
    assert float(torch.corrcoef(torch.stack([model, truth]))[0, 1]) > 0.99
    assert float((model - truth).abs().mean()) < 0.02  # the prior N(0, σ_max² I) accounts for ~0.008
    exact = ode_log_likelihood(MIXTURE, x, SIGMA_MIN, SIGMA_MAX, trace="exact",
                               log_prior=lambda y: MIXTURE.log_density(y, SIGMA_MAX))
    assert float((exact - truth).abs().max()) < 1e-3


def test_exact_nll_gap_is_kl_to_the_model():
    """Model NLL - true NLL estimates KL(data ‖ model): ≈ 0 (≥ 0 up to noise) for the exact denoiser."""
    x, _ = MIXTURE.sample(300, gen(5))
    res = exact_nll(MIXTURE, x, MIXTURE, SIGMA_MIN, SIGMA_MAX, steps=60)
    assert res.model_log_p.shape == res.true_log_p.shape == (300,)
    assert res.gap == pytest.approx(res.model_nll - res.true_nll)
    assert res.gap > -4 * res.gap_stderr and abs(res.gap) < 0.01
    # A callable works too, and a wrong model shows a clear positive gap.
    wide = GaussianMixtureDenoiser(MIXTURE.means, MIXTURE.stds * 1.5, MIXTURE.weights)
    off = exact_nll(wide, x, lambda y: MIXTURE.log_density(y, SIGMA_MIN), SIGMA_MIN, SIGMA_MAX, steps=60)
    assert off.true_nll == pytest.approx(res.true_nll) and off.gap > 0.1 and off.gap > 3 * off.gap_stderr


def test_hutchinson_is_unbiased_against_exact_trace():
    """Mixture (non-diagonal Jacobian): Rademacher Hutchinson averaged over 40 probes per point ≈ exact."""
    x, _ = MIXTURE.sample(25, gen(6))
    exact = ode_log_likelihood(MIXTURE, x, SIGMA_MIN, SIGMA_MAX, trace="exact", steps=30)
    reps = 40
    hutch = ode_log_likelihood(MIXTURE, x.repeat(reps, 1), SIGMA_MIN, SIGMA_MAX, steps=30,
                               generator=gen(7)).reshape(reps, -1)  # (reps, 25): one probe per row
    spread = hutch.std(0)
    assert float(spread.max()) > 1e-3  # the estimator does vary with the probe …
    err = hutch.mean(0) - exact
    # … and is centred on the exact trace (in 2-D a Rademacher estimate takes two values, tr J ± 2 J₁₂)
    assert bool((err.abs() < 5 * spread / math.sqrt(reps) + 1e-6).all())
    assert abs(float(hutch.mean() - exact.mean())) < 4 * float(hutch.std()) / math.sqrt(hutch.numel())


def test_ode_bits_per_dim_of_8bit_gaussian():
    """Dequantised 8-bit N(0, S²): bits/dim = E_u[-log N(y; 0, S²)]/D + log 127.5, over ln 2, just above H(P)."""
    x0, true_nll = discretised_gaussian(64, 8, seed=8)
    res = ode_bits_per_dim(GaussianDenoiser(0.0, S), x0, SIGMA_MIN, SIGMA_MAX, prior_var=S**2, steps=40,
                           batch_size=24, generator=gen(9), progress=False)
    assert res.per_image.shape == (64,) and res.nfe == 160
    # E over u of y² = x0² + BIN²/12 per pixel; σ_min adds σ_min² to the variance.
    var = S**2 + SIGMA_MIN**2
    expected = (0.5 * math.log(2 * math.pi * var) + (x0**2 + BIN**2 / 12).mean(1) / (2 * var) + math.log(127.5))
    expected = expected / math.log(2)
    err = res.per_image - expected  # per image: the one draw of u moves it by ~0.004
    assert float(err.abs().max()) < 0.02 and abs(float(err.mean())) < 2e-3
    true_bits = true_nll / (8 * math.log(2))
    # Dequantisation bound ≥ discrete NLL, and close inside the range; the end levels own the open
    # tails (mass beyond ±1) in P but only one bin of the density, so images touching ±1 pay more.
    inside = (x0.abs() < 1).all(1)
    gap = (res.per_image - true_bits)[inside]
    assert inside.sum() > 50 and abs(float(gap.mean())) < 2e-3


# --------------------------------------------------------------------------- the variational bound
def test_vlb_bounds_discretised_gaussian():
    """Exact denoiser of N(0, S²), 8-bit data: the bound is ≥ the true -log₂ P(x_0)/D and close to it.

    E[bound] = H(P) + KL(P ‖ p_θ) + E KL(q(x_{1:T} | x_0) ‖ p_θ(x_{1:T} | x_0)) ≥ H(P). With the exact
    denoiser of the continuous Gaussian, p_θ is N(0, S²) integrated over the bins (≈ P), and the posterior
    KL comes only from the Gaussian form of the reverse steps, the prior and the decoder, which vanish as
    the steps get fine (β_t → 0), ᾱ_T → 0 and σ_0 ≈ one level. With β_t (large) it measures ≈ 0.03 bit/dim.
    """
    n, d = 512, 16
    x0, true_nll = discretised_gaussian(n, d, seed=10)
    true_bits = true_nll / (d * math.log(2))
    D = GaussianDenoiser(0.0, S)
    res = vlb_bits_per_dim(D, LINEAR, x0, batch_size=50_000, generator=gen(11), progress=False)
    gap = res.per_image - true_bits
    se = float(gap.std()) / math.sqrt(n)
    assert -3 * se < float(gap.mean()) < 0.1
    assert res.bits_per_dim == pytest.approx(res.prior + res.diffusion + res.decoder)
    assert 0 <= res.prior < 1e-4 and res.timesteps == 999 and res.variance == "large"
    assert res.per_timestep.shape == (1000,) and not bool(res.per_timestep.isnan().any())
    small = vlb_bits_per_dim(D, LINEAR, x0, variance="small", batch_size=50_000, generator=gen(12), progress=False)
    assert small.bits_per_dim > res.bits_per_dim + 0.3  # β̃_t understates the first, coarse steps' variance


def test_vlb_monte_carlo_is_unbiased():
    """k importance-weighted timesteps per image estimate the full sum without bias."""
    x0, _ = discretised_gaussian(256, 16, seed=13)
    D = GaussianDenoiser(0.0, S)
    full = torch.stack([vlb_bits_per_dim(D, LINEAR, x0, batch_size=50_000, generator=gen(20 + i),
                                         progress=False).per_image.mean() for i in range(4)])
    mc = [vlb_bits_per_dim(D, LINEAR, x0, timesteps=20, batch_size=50_000, generator=gen(40 + i), progress=False)
          for i in range(8)]
    means = torch.stack([r.per_image.mean() for r in mc])
    se = math.sqrt(float(full.var()) / len(full) + float(means.var()) / len(means))
    assert abs(float(means.mean() - full.mean())) < 4 * se + 1e-3
    assert mc[0].timesteps == 20 and int((~mc[0].per_timestep.isnan()).sum()) > 20


@pytest.mark.parametrize("variance", ["large", "small"])
def test_vlb_terms_match_explicit_posterior_kl(variance):
    """The closed-form terms equal KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) built in x_t space (eq. 6–7)."""
    g = gen(14)
    x0 = torch.randint(0, 256, (6, 5), generator=g).double() / 127.5 - 1
    x0_hat = x0 + 0.05 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 300, 998, 999])
    sigma = LINEAR.sigmas[t][:, None]
    x_t = (x0 + sigma * torch.randn(6, 5, generator=g, dtype=torch.float64)) / (1 + sigma**2).sqrt()  # σ-form → x_t
    mean_q, var_q = LINEAR.posterior(x_t, x0, t)
    mean_p, _ = LINEAR.posterior(x_t, x0_hat, t)
    var_p = var_q if variance == "small" else LINEAR.betas[t][:, None]
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1).sum(1)
    assert torch.allclose(_term_nats(LINEAR, t, x0, x0_hat, variance), kl, rtol=1e-9, atol=1e-9)


def test_vlb_decoder_integrates_the_bins():
    """t = 0: -log of N(x̂_0, β_1) integrated over each pixel's 8-bit bin, the end bins open to ±∞."""
    x0 = torch.tensor([[-1.0, 0.0, 128 / 127.5 - 1, 1.0]], dtype=torch.float64)
    x0_hat = torch.tensor([[-0.99, 0.002, 0.01, 0.999]], dtype=torch.float64)
    std = math.sqrt(float(LINEAR.betas[0]))
    normal = torch.distributions.Normal(x0_hat[0], torch.tensor(std, dtype=torch.float64))
    hi, lo = normal.cdf(x0[0] + BIN / 2), normal.cdf(x0[0] - BIN / 2)
    mass = torch.stack([hi[0], hi[1] - lo[1], hi[2] - lo[2], 1 - lo[3]])
    nats = _term_nats(LINEAR, torch.tensor([0]), x0, x0_hat, "large")
    assert float(nats) == pytest.approx(float(-mass.log().sum()), rel=1e-9)
    # 50 standard deviations from x̂_0 the bin's mass is ~e^-1250: still finite, the tail's log-CDF
    far = _term_nats(LINEAR, torch.tensor([0]), torch.zeros(1, 1, dtype=torch.float64),
                     torch.full((1, 1), 0.5, dtype=torch.float64), "large")
    tail = -torch.special.log_ndtr(torch.tensor((BIN / 2 - 0.5) / std, dtype=torch.float64))
    assert float(far) == pytest.approx(float(tail), rel=1e-9)


class TinyNet(torch.nn.Module):
    """F(z, noise_cond, labels): a linear map with a label embedding, enough to exercise the plumbing."""

    def __init__(self, dim: int = 12, classes: int = 3):
        super().__init__()
        self.lin, self.emb = torch.nn.Linear(dim + 1, dim), torch.nn.Embedding(classes, dim)

    def forward(self, z, t, cond=None):
        h = self.lin(torch.cat([z.flatten(1), t.float()[:, None] / 1000], 1))
        return (h + (self.emb(cond) if cond is not None else 0)).reshape(z.shape)


def test_network_denoiser_with_labels_runs_both_likelihoods():
    """A float32 ε-network on a discrete chain, class labels split across batches: finite, shaped results."""
    torch.manual_seed(0)
    sched = DiscreteSchedule.from_name("cosine", 50)
    D = VPDenoiser(TinyNet(), "eps", schedule=sched).requires_grad_(False)
    x0 = torch.randint(0, 256, (5, 3, 2, 2), generator=gen(15), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1, 0])
    res = vlb_bits_per_dim(D, sched, x0, labels, timesteps=7, batch_size=9, generator=gen(16), progress=False)
    assert res.per_image.shape == (5,) and bool(res.per_image.isfinite().all()) and res.bits_per_dim > 0
    again = vlb_bits_per_dim(D, sched, x0, labels, timesteps=7, batch_size=9, generator=gen(16), progress=False)
    assert torch.equal(res.per_image, again.per_image)  # seeded: reproducible
    ode = ode_bits_per_dim(D, x0.float() / 127.5 - 1, sched.sigma_min, sched.sigma_max, cond=labels, steps=4,
                           batch_size=2, generator=gen(17), progress=False)
    assert ode.per_image.shape == (5,) and bool(ode.per_image.isfinite().all())


# --------------------------------------------------------------------------- clear errors
def _err(fn, match):
    with pytest.raises(UndiffuseError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def test_errors_are_one_line():
    D = GaussianDenoiser(0.0, S)
    good = torch.randint(0, 256, (2, 4), generator=gen(18)).double() / 127.5 - 1
    _err(lambda: vlb_bits_per_dim(D, LINEAR, good * 1.5, progress=False), r"must lie in \[-1, 1\]")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, torch.zeros(2, 4), progress=False), "8-bit values")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, good.index_fill(1, torch.tensor([0]), math.nan), progress=False),
         "inf or NaN")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, torch.zeros(4), progress=False), r"shape \(batch, ...\)")
    _err(lambda: vlb_bits_per_dim(EDMDenoiser(TinyNet()), LINEAR, good, progress=False), "EDM model")
    _err(lambda: vlb_bits_per_dim(D, None, good, progress=False), "DiscreteSchedule")
    vp = VPDenoiser(TinyNet(), schedule=DiscreteSchedule.from_name("linear", 100))
    _err(lambda: vlb_bits_per_dim(vp, LINEAR, good, progress=False), "not the one the model was trained on")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, good, timesteps=1000, progress=False), "timesteps must be")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, good, variance="medium", progress=False), "variance must be")
    _err(lambda: vlb_bits_per_dim(D, LINEAR, good, torch.zeros(3), progress=False), "one entry per sample")
    x = torch.zeros(3, 2, dtype=torch.float64)
    _err(lambda: ode_log_likelihood(D, x, 1.0, 0.5), "sigma_min < sigma_max")
    _err(lambda: ode_log_likelihood(D, x, 0.0, 1.0), "sigma_min < sigma_max")
    _err(lambda: ode_log_likelihood(D, x, 0.1, 1.0, trace="approx"), "trace must be")
    _err(lambda: ode_log_likelihood(D, x, 0.1, 1.0, probes=0), "probes must be")
    _err(lambda: ode_log_likelihood(D, x + math.inf, 0.1, 1.0), "inf or NaN")
    _err(lambda: ode_bits_per_dim(D, good - 2.5, 0.1, 1.0, progress=False), r"must lie in \[-1, 1\]")
    _err(lambda: ode_bits_per_dim(D, good.long(), 0.1, 1.0, progress=False), "uint8 levels or floats")
    _err(lambda: exact_nll(D, x, 3.0, 0.1, 1.0), "true_log_density")


def test_vlb_terms_are_the_bound_step_by_step():
    """With a denoiser that knows x_0 the terms have no noise: step by step they are the full bound's terms, and an
    error δ in x̂_0 costs exactly λ_t ‖ε - ε̂‖² nats more at step t (the ELBO as a weighted ε-loss)."""
    class Oracle(torch.nn.Module):
        def __init__(self, delta: float):
            super().__init__()
            self.delta = delta

        def forward(self, x, sigma, cond):
            return cond.to(x.dtype) + self.delta

    x0, _ = discretised_gaussian(32, 16, seed=3)
    oracle = Oracle(0.0)
    full = vlb_bits_per_dim(oracle, LINEAR, x0, x0, batch_size=50_000, generator=gen(1), progress=False)
    t = torch.arange(LINEAR.T)
    terms = vlb_terms(oracle, LINEAR, x0, t, x0)
    assert float(terms.bits[0]) == pytest.approx(full.decoder, rel=1e-6)
    assert float(terms.bits[1:].sum()) == pytest.approx(full.diffusion, rel=1e-6)
    off = vlb_terms(Oracle(0.01), LINEAR, x0, t, x0)
    extra_nats = (off.bits - terms.bits)[1:] * 16 * math.log(2)
    assert torch.allclose(extra_nats, (off.weight * off.eps_mse)[1:] * 16, rtol=1e-3)
    assert off.weight[0] == 0 and bool((off.weight[1:] > 0).all())
    with pytest.raises(UndiffuseError, match="chain steps"):
        vlb_terms(oracle, LINEAR, x0, torch.tensor([LINEAR.T]), x0)
