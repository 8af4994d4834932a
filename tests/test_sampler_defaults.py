"""Every sampler draws recognisable garments from the shipped Fashion-MNIST model with its own defaults.

The shipped model is a v-prediction U-Net on a 1000-step cosine chain, whose last σ is 2·10⁴. Before the grid cap
(:data:`~undiffuse.process.GRID_SIGMA_MAX`) and the first-order long steps (:data:`~undiffuse.samplers.H_MAX`),
heun, dpm_2 and dpmpp_3m_sde drew noise from it at 5–10 steps. bench/sampler_defaults.py measures every step count.
"""

import math

import pytest
from conftest import draw_clear_classes

from undiffuse import process, samplers
from undiffuse.evaluation.classifier import load_classifier
from undiffuse.models import load_model

STEPS = 10
# Two seeded images each of the five classes the shipped classifier names best (conftest.CLEAR_CLASSES).
# The bound: ≥ 8 of the 10 recognised. Measured at 10 steps on the default grid (2 images per class, all 10 classes,
# seed 1000): every sampler recognised 90–100 % (the classifier itself: 93 % of real test images); the broken
# settings this guards against recognised 10–35 % (heun on the old Karras grid from σ = 2·10⁴: 35 %; heun on the
# trailing grid: 10 %, the rate of noise) and dpmpp_3m_sde, degraded, 75 %. A healthy sampler that recognises 95 %
# of the asked class falls below 8 of 10 with probability 1 %, on these five clear classes far less.
MIN_RECOGNISED = 8
# Saturated pixels: broken samples put 7–99 % of their pixels beyond ±1.2 (outside the data's [-1, 1]); every
# healthy setting measured put ≤ 0.1 % there.
MAX_SATURATED = 0.01


@pytest.fixture(scope="module")
def shipped(one_thread):
    return load_model("fashion-mnist"), load_classifier()


def test_karras_grid_starts_at_the_cap(shipped):
    """A Karras grid on the shipped model's cosine chain starts at σ = 80, not at its last σ of 2·10⁴; the card's
    own grid (trailing) keeps the chain's whole range."""
    model, _ = shipped
    grid = model.sigmas(STEPS, "karras")
    schedule = process.DiscreteSchedule.from_name("cosine", 1000)
    assert model.config.diffusion.schedule == "cosine" and schedule.sigma_max > 1e4
    assert model.config.sample.grid == "trailing" and math.isclose(float(model.sigmas(STEPS)[0]), schedule.sigma_max,
                                                                   rel_tol=1e-4)
    assert math.isclose(float(grid[0]), process.GRID_SIGMA_MAX)
    assert math.isclose(float(grid[-2]), schedule.sigma_min) and grid[-1] == 0


def test_step_order_is_first_order_on_long_and_final_steps():
    assert samplers.step_order(80.0, 40.0, 2) == 2                      # h = 0.69
    assert samplers.step_order(2e4, 6.4, 2) == 1                        # the trailing grid's first step
    assert samplers.step_order(1.0, 0.0, 3) == 1                        # the last step lands on x̂0
    assert samplers.step_order(4.0, 1.0, 2, h_max=samplers.H_MAX_RK) == 2    # σ/σ_next = 4 ≤ 5
    assert samplers.step_order(6.0, 1.0, 2, h_max=samplers.H_MAX_RK) == 1
    assert samplers.step_order(3.0, 1.0, 3, eta=1.0) == 1               # an SDE step spans (1 + η)·h = 2.2


@pytest.mark.parametrize("name", samplers.names())
def test_every_sampler_draws_the_asked_class(shipped, name):
    model, classifier = shipped
    card = model.config.sample
    images, labels = draw_clear_classes(model, sampler=name, steps=STEPS, grid=card.grid, guidance=card.guidance)
    saturated = float((images.abs() > 1.2).float().mean())
    recognised = int((classifier.predict(images.clamp(-1, 1)) == labels).sum())
    assert saturated <= MAX_SATURATED, f"{name}: {saturated:.1%} of pixels beyond ±1.2"
    assert recognised >= MIN_RECOGNISED, f"{name}: {recognised} of {len(labels)} recognised as the asked class"
