"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) for few-step (distilled) models."""

from __future__ import annotations

from itertools import pairwise

from .registry import register


@register("consistency", order=None, stochastic=True, distilled=True)
def consistency(model, x, sigmas, noise, callback):
    """Multistep consistency sampling: x̂0 = D(x, σ_i), then fresh noise to the next level, x = x̂0 + σ_{i+1}·ε.

    A model distilled to map every point of a probability-flow trajectory to its end (``undiffuse.distill``)
    samples in one step; each further level trades one evaluation for a correction of that first guess. On a
    plain diffusion model, whose D is the posterior mean E[x0 | x] rather than a trajectory's end, it does not
    sample the data distribution (its samples are too smooth), though at 10 steps they are still recognisable.
    """
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x0_hat = model(x, sigma)
        callback(i, sigma, x, x0_hat)
        x = x0_hat + noise() * sigma_next if sigma_next > 0 else x0_hat
    return x
