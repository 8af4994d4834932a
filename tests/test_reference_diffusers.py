"""Reference equivalence with diffusers' schedulers on the same ε-network, timesteps and noise.

Our samplers run in σ-form (x = x0 + σ ε) on a σ grid; diffusers' DDPM/DDIM/DPM-Solver/UniPC
schedulers run on the VP sample x_t = x / √(1+σ²) at integer timesteps, its Euler scheduler in
σ-form. Each test runs diffusers' own denoising loop (set_timesteps → scale_model_input → net →
step) and our sampler with one fixed float64 ε-network, the same timesteps and the same initial
noise (and, for the stochastic ones, generators seeded alike so that both draw the same noise at
the same steps), then compares the final samples, and at every step the sample and x̂0 (ours via
the callback), and the timesteps the network was called with.

Tolerances. The network is float64, so differences come only from float rounding and from the
fractional t that VPDenoiser recovers from σ (exactly the integer timestep diffusers passes; we
check it). diffusers keeps its schedule tables in float32: ``test_schedules_match`` checks they
are ours to float32 rounding, and the main tests then swap in our float64 tables (same values
at the same timesteps) so that what is left measures the algorithms:

* DDPM, DDIM, UniPC run in float64 end to end: agreement to 1e-12 relative (measured ≤ 1.4e-14),
  except for DDPM's final sample on grids ending at t > 0 (≤ 3.4e-10 absolute, see DDPM_FINAL_ATOL).
* Euler and DPM-Solver++ cast the sample to float32 inside ``step()`` (diffusers 0.42.1,
  ``sample = sample.to(torch.float32)``): agreement to float32 rounding, 5e-6 relative
  (measured ≤ 5e-7).
* ``test_as_shipped_float32_tables`` also runs diffusers untouched: 2e-5 relative (measured ≤ 2.2e-6).

"Relative" is relative to the magnitude of the sample at that step (at least 1): x̂0 = x - σ ε
inherits the rounding error of x, which reaches ~1e5 at the start of a cosine-schedule run.
"""

from __future__ import annotations

import functools
import inspect
import math
import os

import pytest
import torch
from torch import Tensor, nn

from undiffuse import DiscreteSchedule, VPDenoiser, process, samplers

if os.environ.get("CI"):
    import diffusers  # a declared test dependency (pyproject [test]): in CI it must run, never skip
else:
    diffusers = pytest.importorskip("diffusers")

T = 1000
SHAPE = (4, 1, 8, 8)
F64 = torch.float64
DIFFUSERS_BETAS = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
STEPS = (5, 10, 25)

RTOL_F64 = 1e-12        # float64 end to end (DDPM, DDIM, UniPC)
RTOL_F32_STEP = 5e-6    # diffusers' step() rounds the sample to float32 (Euler, DPM-Solver++)
RTOL_SHIPPED = 2e-5     # diffusers with its own float32 schedule tables
# DDPMScheduler clamps the posterior variance to ≥ 1e-20, so at a last step with t > 0 (trailing,
# linspace) it adds √1e-20 · z ≈ 1e-10 · z where we return x̂0 exactly.
DDPM_FINAL_ATOL = 1e-9
T_ATOL = 1e-6           # the t the network sees: the same integer timesteps up to float error

# diffusers calls np.array() on torch tensors, which numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


pytestmark = pytest.mark.usefixtures("one_thread")


class EpsNet(nn.Module):
    """A fixed random ε-network on (B, 1, 8, 8): an MLP on the flattened input and a sinusoidal
    embedding of t, plus the identity (the ε of data near 0, which keeps the samples moderate);
    float64, seeded."""

    def __init__(self, seed: int = 0, hidden: int = 32, emb: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = math.prod(SHAPE[1:])
        self.register_buffer("w1", torch.randn(hidden, d + emb, generator=g, dtype=F64) / math.sqrt(d + emb))
        self.register_buffer("b1", 0.1 * torch.randn(hidden, generator=g, dtype=F64))
        self.register_buffer("w2", torch.randn(d, hidden, generator=g, dtype=F64) / math.sqrt(hidden))
        self.register_buffer("b2", 0.1 * torch.randn(d, generator=g, dtype=F64))
        # Frequencies 1 … 1/1000 per timestep: an off-by-one t changes the output at O(0.1).
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(emb // 2, dtype=F64) / (emb // 2)))
        self.seen_t: list[Tensor] = []

    def forward(self, z: Tensor, t: Tensor, cond=None) -> Tensor:
        t = torch.as_tensor(t).to(F64).expand(z.shape[0])  # diffusers passes a scalar, we (batch,)
        self.seen_t.append(t.clone())
        angles = t[:, None] * self.freqs
        h = torch.cat([z.flatten(1), angles.sin(), angles.cos()], 1) @ self.w1.T + self.b1
        out = torch.tanh(nn.functional.silu(h) @ self.w2.T + self.b2)
        return z + 0.5 * out.view_as(z)


NET = EpsNet()


@functools.cache
def _schedule(beta: str) -> DiscreteSchedule:
    return DiscreteSchedule.from_name(beta, T=T)


# --------------------------------------------------------------------------- scheduler configs
def _config(beta: str, spacing: str, **extra) -> dict:
    return dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule=DIFFUSERS_BETAS[beta],
                trained_betas=None, prediction_type="epsilon", timestep_spacing=spacing, steps_offset=0,
                rescale_betas_zero_snr=False, **extra)


_NO_THRESHOLD = dict(thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
_SIGMAS_FROM_TIMESTEPS = dict(use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                              final_sigmas_type="zero")


def ddpm_config(beta, spacing, variance_type="fixed_small"):
    return _config(beta, spacing, variance_type=variance_type, clip_sample=False, clip_sample_range=1.0,
                   **_NO_THRESHOLD)


def ddim_config(beta, spacing):
    return _config(beta, spacing, clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True, **_NO_THRESHOLD)


def euler_config(beta, spacing):
    return _config(beta, spacing, interpolation_type="linear", sigma_min=None, sigma_max=None,
                   timestep_type="discrete", **_SIGMAS_FROM_TIMESTEPS)


def dpm_config(beta, spacing, solver_type="midpoint"):
    return _config(beta, spacing, solver_order=2, algorithm_type="dpmsolver++", solver_type=solver_type,
                   lower_order_final=True, euler_at_final=False, use_lu_lambdas=False, use_flow_sigmas=False,
                   flow_shift=1.0, lambda_min_clipped=-math.inf, variance_type=None, use_dynamic_shifting=False,
                   time_shift_type="exponential", **_NO_THRESHOLD, **_SIGMAS_FROM_TIMESTEPS)


def unipc_config(beta, spacing, solver_order=2):
    return _config(beta, spacing, solver_order=solver_order, predict_x0=True, solver_type="bh2",
                   lower_order_final=True, disable_corrector=[], solver_p=None, use_flow_sigmas=False,
                   flow_shift=1.0, use_dynamic_shifting=False, time_shift_type="exponential", sigma_min=None,
                   sigma_max=None, shift_terminal=None, **_NO_THRESHOLD, **_SIGMAS_FROM_TIMESTEPS)


def _scheduler(cls_name: str, config: dict):
    """Build a diffusers scheduler with *every* constructor argument given, so that no result
    depends on a default that a diffusers release could change."""
    cls = getattr(diffusers, cls_name)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(config) == params, (f"{cls_name}: set every option explicitly; missing "
                                   f"{sorted(params - set(config))}, unknown {sorted(set(config) - params)}")
    sched = cls(**config)
    for key, value in config.items():
        assert sched.config[key] == value, f"{cls_name}.config[{key!r}] = {sched.config[key]!r}, not {value!r}"
    return sched


# --------------------------------------------------------------------------- the two loops
def _use_float64_tables(sched, schedule: DiscreteSchedule, grid: Tensor) -> None:
    """Replace diffusers' float32 ᾱ / σ tables by our float64 ones (the same values to float32 rounding)."""
    if isinstance(sched, diffusers.DDPMScheduler | diffusers.DDIMScheduler):
        torch.testing.assert_close(sched.alphas_cumprod.double(), schedule.alpha_bars, rtol=2e-5, atol=0)
        sched.betas, sched.alphas = schedule.betas.clone(), schedule.alphas.clone()
        sched.alphas_cumprod = schedule.alpha_bars.clone()
    else:  # Euler, DPM-Solver, UniPC step on their σ grid; float32 loses up to 3e-4 of σ at t = 0
        torch.testing.assert_close(sched.sigmas.double(), grid, rtol=5e-4, atol=0)
        sched.sigmas = grid.clone()


def _run_diffusers(sched, x: Tensor, grid: Tensor, vp: bool, **step_kwargs):
    """diffusers' denoising loop; the trajectory is returned in σ-form for comparison."""
    xs, x0s = [], []
    for i, t in enumerate(sched.timesteps):
        eps = NET(sched.scale_model_input(x, t), t)
        out = sched.step(eps, t, x, **step_kwargs)
        # UniPC corrects the sample it was given (UniC) before predicting: compare the corrected one.
        x_i = sched.last_sample if getattr(sched, "last_sample", None) is not None else x
        x0 = getattr(out, "pred_original_sample", None)
        xs.append(x_i * math.sqrt(1 + float(grid[i]) ** 2) if vp else x_i)
        x0s.append(sched.model_outputs[-1] if x0 is None else x0)  # multistep: the converted x̂0
        x = out.prev_sample
    return x, xs, x0s


def _run_ours(name: str, schedule: DiscreteSchedule, x: Tensor, grid: Tensor, **opts):
    xs, x0s = [], []

    def callback(i, sigma, x_i, x0_hat):
        xs.append(x_i.clone())
        x0s.append(x0_hat.clone())

    out = samplers.get(name)(VPDenoiser(NET, prediction="eps", schedule=schedule), x, grid, callback=callback, **opts)
    return out, xs, x0s


def _assert_close(ours: Tensor, ref: Tensor, rtol: float, what: str, scale_of: Tensor | None = None,
                  atol: float = 0.0) -> float:
    scale = max(1.0, float((ref if scale_of is None else scale_of).abs().max()))
    err = float((ours - ref).abs().max())
    assert err <= rtol * scale + atol, f"{what}: max |Δ| = {err:.3g} > {rtol:g} × {scale:.3g} + {atol:g}"
    return err


def compare(name: str, sched, beta: str, n: int, spacing: str | None, *, rtol: float, opts=None,
            step_kwargs=None, seed: int | None = None, per_sample_seeds=None, float64_tables: bool = True,
            final_atol: float = 0.0) -> None:
    """Run diffusers' loop and our sampler ``name`` and compare them step by step.

    ``spacing``: build our grid with ``sigmas_uniform_t(…, spacing)``; None: from diffusers' own
    timesteps (its DPM-Solver/UniPC "linspace"/"leading" differ from DDPM's).
    """
    schedule = _schedule(beta)
    sched.set_timesteps(n)
    timesteps = sched.timesteps.long()
    grid = (process.sigmas_uniform_t(schedule, n, spacing) if spacing is not None
            else process.sigmas_from_list(schedule.sigmas[timesteps]))
    assert len(grid) == n + 1 and torch.equal(grid[:-1], schedule.sigmas[timesteps]), "not the same timesteps"
    if float64_tables:
        _use_float64_tables(sched, schedule, grid)
    vp = not isinstance(sched, diffusers.EulerDiscreteScheduler)
    if vp:
        assert sched.init_noise_sigma == 1.0
    # diffusers starts from N(0, init_noise_sigma²): a VP x_T (ours: x_T √(1+σ_0²)), for Euler already σ-form.
    x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1234), dtype=F64) * sched.init_noise_sigma
    x_ours = x_ref * math.sqrt(1 + float(grid[0]) ** 2) if vp else x_ref.clone()

    def generators():
        if per_sample_seeds is not None:
            return samplers.make_generators(per_sample_seeds)
        return None if seed is None else torch.Generator().manual_seed(seed)

    step_kwargs = dict(step_kwargs or {})
    if generators() is not None:
        step_kwargs["generator"] = generators()
    NET.seen_t = []
    ref, ref_xs, ref_x0s = _run_diffusers(sched, x_ref, grid, vp, **step_kwargs)
    t_ref, NET.seen_t = NET.seen_t, []
    out, xs, x0s = _run_ours(name, schedule, x_ours, grid, generator=generators(), **(opts or {}))
    t_ours = NET.seen_t

    assert len(t_ours) == len(t_ref) == n, "not the same number of network calls"
    torch.testing.assert_close(torch.stack(t_ours), torch.stack(t_ref), rtol=0, atol=T_ATOL)
    assert len(xs) == len(ref_xs) == n
    for i, (x_i, r_i, x0_i, r0_i) in enumerate(zip(xs, ref_xs, x0s, ref_x0s, strict=True)):
        _assert_close(x_i, r_i, rtol, f"step {i} (t={int(timesteps[i])}): x")
        _assert_close(x0_i, r0_i, rtol, f"step {i} (t={int(timesteps[i])}): x̂0", scale_of=r_i)
    _assert_close(out, ref, rtol, "final sample", atol=final_atol)


def _cases(*spacings):
    return [pytest.param(beta, n, s, id=f"{beta}-n{n}-{s}") for beta in DIFFUSERS_BETAS for n in STEPS
            for s in spacings]


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("beta", list(DIFFUSERS_BETAS))
def test_schedules_match(beta):
    """Our β schedules are diffusers' (computed in float64 where diffusers rounds to float32)."""
    ours, theirs = _schedule(beta), _scheduler("DDPMScheduler", ddpm_config(beta, "leading"))
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1.2e-7, atol=0)  # 1 float32 ulp
    # diffusers' float32 cumprod drifts: 4e-7 (linear), 1.3e-5 (cosine, at t = 999 where ᾱ = 2.4e-9)
    torch.testing.assert_close(ours.alpha_bars, theirs.alphas_cumprod.double(), rtol=2e-5, atol=0)


def test_network_is_sensitive_to_t_and_input():
    """The fixture network would expose an off-by-one timestep or a wrong input scaling."""
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.full((SHAPE[0],), 500.0, dtype=F64)
    base = NET(z, t)
    assert float((NET(z, t + 1) - base).abs().max()) > 1e-2
    assert float((NET(z * (1 + 1e-3), t) - base - 1e-3 * z).abs().max()) > 1e-5


@pytest.mark.parametrize("variance,variance_type,spacing", [
    ("posterior", "fixed_small", "leading"),
    ("posterior", "fixed_small", "trailing"),
    ("posterior", "fixed_small", "linspace"),
    # with "fixed_large" diffusers adds √(1-ᾱ_t)·z at a last step with t > 0, where DDPM (and we)
    # return x̂0; the leading grid ends at t = 0, where both agree.
    ("beta", "fixed_large", "leading"),
])
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("beta", list(DIFFUSERS_BETAS))
def test_ddpm(beta, n, variance, variance_type, spacing):
    sched = _scheduler("DDPMScheduler", ddpm_config(beta, spacing, variance_type))
    compare("ddpm", sched, beta, n, spacing, rtol=RTOL_F64, seed=7, opts=dict(variance=variance),
            final_atol=DDPM_FINAL_ATOL)


def test_ddpm_per_sample_generators():
    """A list of generators: both draw row i of every noise tensor from generator i."""
    sched = _scheduler("DDPMScheduler", ddpm_config("linear", "leading"))
    compare("ddpm", sched, "linear", 10, "leading", rtol=RTOL_F64, per_sample_seeds=[11, 12, 13, 14],
            final_atol=DDPM_FINAL_ATOL)


# DDIMScheduler steps to t - T//n, which only follows its own "linspace" grid when that grid is
# uniform with stride T//n; "leading" and "trailing" (n dividing T) are.
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("beta,n,spacing", _cases("leading", "trailing"))
def test_ddim(beta, n, spacing, eta):
    sched = _scheduler("DDIMScheduler", ddim_config(beta, spacing))
    compare("ddim", sched, beta, n, spacing, rtol=RTOL_F64, opts=dict(eta=eta),
            step_kwargs=dict(eta=eta, use_clipped_model_output=False), seed=7 if eta > 0 else None)


# EulerDiscreteScheduler's "linspace" uses fractional, unrounded timesteps; leading/trailing are integers.
@pytest.mark.parametrize("beta,n,spacing", _cases("leading", "trailing"))
def test_euler(beta, n, spacing):
    sched = _scheduler("EulerDiscreteScheduler", euler_config(beta, spacing))
    compare("euler", sched, beta, n, spacing, rtol=RTOL_F32_STEP)


# Multistep schedulers: "trailing" is ours; their "linspace"/"leading" take n of n+1 points, so
# those grids come from diffusers' timesteps via sigmas_from_list.
_MULTISTEP = _cases("trailing", "linspace", "leading")
# Our multistep samplers take a step longer than samplers.H_MAX in λ = -ln σ first order (the last step of the
# leading and linspace grids, t ≈ T/n → 0, is h = 2.5–4.6); diffusers' take it at full order. h_max = ∞ compares
# the textbook methods on every step.
TEXTBOOK = {"h_max": math.inf}


@pytest.mark.parametrize("beta,n,spacing", _MULTISTEP)
def test_dpmpp_2m(beta, n, spacing):
    sched = _scheduler("DPMSolverMultistepScheduler", dpm_config(beta, spacing))
    compare("dpmpp_2m", sched, beta, n, spacing if spacing == "trailing" else None, rtol=RTOL_F32_STEP,
            opts=TEXTBOOK)


@pytest.mark.parametrize("beta,n,spacing", _MULTISTEP)
def test_unipc(beta, n, spacing):
    sched = _scheduler("UniPCMultistepScheduler", unipc_config(beta, spacing))
    compare("unipc", sched, beta, n, spacing if spacing == "trailing" else None, rtol=RTOL_F64, opts=TEXTBOOK)


@pytest.mark.parametrize("beta,n,spacing", _cases("trailing"))
def test_unipc_order_3(beta, n, spacing):
    sched = _scheduler("UniPCMultistepScheduler", unipc_config(beta, spacing, solver_order=3))
    compare("unipc", sched, beta, n, spacing, rtol=RTOL_F64, opts=dict(order=3))


@pytest.mark.parametrize("beta,n,spacing", _cases("trailing"))
def test_dpmpp_2m_sde_without_noise_heun(beta, n, spacing):
    """η = 0 turns our DPM-Solver++(2M) SDE sampler into the ODE solver; its "heun" variant is diffusers'."""
    sched = _scheduler("DPMSolverMultistepScheduler", dpm_config(beta, spacing, solver_type="heun"))
    compare("dpmpp_2m_sde", sched, beta, n, spacing, rtol=RTOL_F32_STEP, opts=dict(eta=0.0, solver_type="heun"))


@pytest.mark.parametrize("name,cls_name,config,spacing,kwargs", [
    pytest.param("ddpm", "DDPMScheduler", ddpm_config, "leading", dict(seed=7), id="ddpm"),
    pytest.param("ddim", "DDIMScheduler", ddim_config, "trailing", {}, id="ddim"),
    pytest.param("euler", "EulerDiscreteScheduler", euler_config, "trailing", {}, id="euler"),
    pytest.param("dpmpp_2m", "DPMSolverMultistepScheduler", dpm_config, "trailing", {}, id="dpmpp_2m"),
    pytest.param("unipc", "UniPCMultistepScheduler", unipc_config, "trailing", {}, id="unipc"),
])
def test_as_shipped_float32_tables(name, cls_name, config, spacing, kwargs):
    """diffusers untouched, with its float32 ᾱ and σ tables (linear schedule, where they hold ~4e-7)."""
    sched = _scheduler(cls_name, config("linear", spacing))
    compare(name, sched, "linear", 10, spacing, rtol=RTOL_SHIPPED, float64_tables=False, **kwargs)
