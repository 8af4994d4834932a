"""Sample quality against the number of network evaluations, for every sampler asked: `undiffuse evaluate`.

For each (sampler, steps) n images are drawn (seeds seed, seed+1, …, the same for every sampler; a
class-conditional model draws the classes in turn) and compared with n held-out real images in the
space of a feature network: Fréchet distance (FID with Inception-v3), KID, and improved precision /
recall. The same figures between two disjoint real sets of n images are the floor: what the data
itself scores at this n (FID is biased upwards at small n). A class-conditional model is also scored
by a classifier: the fraction of samples recognised as the class asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import samplers
from ..errors import UndiffuseError
from ..models import LoadedModel, build_schedule, sigma_range
from ..sampling import SampleRequest, card_eps_scale, card_guidance_parallel, card_interval, generate, load_guide
from .fid import fid_from_features, kernel_distance
from .likelihood import ode_bits_per_dim, vlb_bits_per_dim
from .nearest import novelty
from .precision_recall import precision_recall
from .reference import Reference, cached_features, reference_set

FEATURE_NETWORKS = ("inception", "classifier")


@dataclass
class EvalSettings:
    """What to measure; every figure is reported with its n."""

    samplers: list[str] = field(default_factory=lambda: ["ddim", "dpmpp_2m"])
    steps: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    n: int = 1000                  # generated images per setting (and real images per real set)
    guidance: float | None = None  # None: the model's recipe (class-conditional models)
    guidance_interval: tuple[float, float] | None = None  # None: the model card's (its [sample] guidance_interval)
    seed: int = 0
    grid: str | None = None        # σ grid; None: the model's recipe
    # The grid's σ range and Karras exponent, x̂0 clipping, ε scaling and CFG rescale, as `undiffuse sample` takes
    # them (None / defaults: the grid's own range, no clipping, the card's ε scaling, no rescale).
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    clip_x0: bool = False
    eps_scale: float | None = None
    guidance_rescale: float = 0.0
    guidance_parallel: float | None = None  # None: the card's
    autoguide: str | None = None   # autoguidance by this weaker model instead of classifier-free guidance
    features: str | None = None    # inception (FID proper) | classifier (the classifier's 128-d); None: the
    #                                model's kind (inception for images, classifier for sounds)
    classifier: str | None = None  # None: fashion-mnist-classifier, or spoken-digits-judge for a sound model
    k: int = 3                     # neighbours of the precision / recall manifolds
    batch_size: int = 64
    likelihood: int = 0            # held-out images to measure bits/dim on (VLB and ODE); 0: skip
    vlb_timesteps: int = 100       # importance-sampled chain steps per image for the VLB (0: all T)
    ode_rtol: float = 1e-3         # ODE solver tolerance (1e-4 moved bits/dim by ~0.01 on the shipped model)


# As `sample`'s, each with the value that leaves sampling as it is.
SAMPLING_OPTIONS = {"sigma_min": None, "sigma_max": None, "rho": 7.0, "clip_x0": False, "eps_scale": 1.0,
                    "guidance_rescale": 0.0, "guidance_parallel": 1.0}


def sampling_options_given(settings: dict[str, Any]) -> dict[str, Any]:
    """Those of :data:`SAMPLING_OPTIONS` in ``settings`` (an :class:`EvalSettings` as a dict) that change sampling
    (None: left to the model card, which :func:`for_model` resolves)."""
    return {k: settings[k] for k, plain in SAMPLING_OPTIONS.items() if settings.get(k) not in (None, plain)}


@dataclass
class Scores:
    """Distances of one image set to the real comparison set."""

    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float


@dataclass
class Row:
    """One (sampler, steps) setting: its cost and its scores."""

    sampler: str
    steps: int
    nfe: float                 # network evaluations per sample: a guided step counts its two branches (one
    #                            batched call), a step outside the guidance interval one
    seconds: float             # wall time to draw the n samples
    scores: Scores
    accuracy: float | None = None            # classifier recognises the class asked for
    per_class: dict[str, float] | None = None
    novelty: dict[str, float] | None = None  # sound: distances to the nearest training clip (spectrograms)


@dataclass
class Evaluation:
    """All rows, the real-vs-real floor and what they were measured with."""

    model: str
    n: int
    reference: str
    features: str
    guidance: float | None
    guidance_interval: tuple[float, float] | None  # σ range guided in (None: every σ)
    grid: str                                      # the σ grid every row sampled on
    floor: Scores
    floor_accuracy: float | None
    rows: list[Row]
    settings: dict[str, Any]
    likelihood: dict[str, Any] | None
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _NetworkCounter:
    """Counts the rows that pass through a denoiser (a forward hook), to turn them into NFE per sample."""

    def __init__(self, module: torch.nn.Module):
        self.rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        self.rows += output.shape[0]

    def close(self) -> None:
        self.handle.remove()


def feature_network(settings: EvalSettings, device: str = "cpu", progress: bool = True) -> Callable[[Tensor], Tensor]:
    """images in [-1, 1] → (N, D) features of the chosen network (Inception shows a bar when ``progress``)."""
    if settings.features == "inception":
        from .inception import InceptionFeatures
        net = InceptionFeatures(device)
        return lambda images: net(images, progress=progress)
    if settings.features == "classifier":
        from .classifier import load_classifier
        clf = load_classifier(settings.classifier, device)
        return lambda images: clf.features(images).double()
    raise UndiffuseError(f"unknown feature network {settings.features!r}; choose {', '.join(FEATURE_NETWORKS)}")


SOUND_JUDGE = "spoken-digits-judge"


def for_model(model: LoadedModel, settings: EvalSettings) -> EvalSettings:
    """``settings`` with the feature network and classifier left open chosen by the model's kind (a sound model is
    heard by the spoken-digit judge: its features and its verdict; Inception knows no spectrograms), and the σ grid
    as our name (a web UI's resolved) and the ε scaling and guidance projection, the card's where none is given."""
    sound = model.space.kind == "spectrogram"
    features = settings.features or ("classifier" if sound else "inception")
    if sound and features == "inception":
        raise UndiffuseError(f"{model.source} makes sounds: score them with --features classifier (the spoken-digit "
                             "judge), not Inception, which was trained on photographs")
    classifier = settings.classifier or (SOUND_JUDGE if sound else "fashion-mnist-classifier")
    grid = samplers.resolve_grid(settings.grid) if settings.grid else model.config.sample.grid
    return replace(settings, features=features, classifier=classifier, grid=grid,
                   eps_scale=card_eps_scale(model, settings.eps_scale),
                   guidance_parallel=card_guidance_parallel(model, settings.guidance_parallel))


def as_judged(model: LoadedModel, samples: Tensor) -> Tensor:
    """What the feature network and classifier see of generated samples: the images, or a sound's spectrogram as
    it sounds (the decoded wave encoded again: phase recovery is part of what is judged)."""
    return model.space.encode(samples) if model.space.kind == "spectrogram" else samples


def _training_sounds(model: LoadedModel) -> Tensor | None:
    """A spoken-digits model's training clips as flat spectrograms in [-1, 1] (for nearest-clip distances, against
    the held-out voices' clips), else None (a folder of clips has no held-out split to compare with)."""
    if model.space.kind != "spectrogram" or model.config.data.name != "spoken_digits":
        return None
    from ..data.images import to_float
    from ..data.sound import load_sound_images
    return to_float(load_sound_images(model.config).images).flatten(1)


def _check(model: LoadedModel, settings: EvalSettings) -> None:
    if model.text_conditioned:
        raise UndiffuseError(f"{model.source} is text-conditioned: evaluate measures unconditional and "
                             "class-conditional image models (bench/text_model.py scores text models)")
    if model.meta.get("dim"):
        raise UndiffuseError(f"{model.source} is a {model.meta['dim']}-D point model: evaluate measures image models")
    if settings.likelihood and model.space.kind != "pixels":
        what = "latents" if model.space.kind == "latent" else "spectrograms"
        raise UndiffuseError(f"{model.source} diffuses in a {model.space.kind} space: its likelihood would be that "
                             f"of {what}, not of images (bits/dim are measured for pixel-space models only)")
    if settings.likelihood < 0 or settings.vlb_timesteps < 0 or not 0 < settings.ode_rtol < 1:
        raise UndiffuseError("likelihood and vlb_timesteps must be ≥ 0 and ode_rtol in (0, 1)")
    if settings.n < 2 * settings.k + 2:
        raise UndiffuseError(f"n must be at least {2 * settings.k + 2}, got {settings.n}")
    if not settings.steps or min(settings.steps) < 1:
        raise UndiffuseError(f"steps must be positive integers, got {settings.steps}")
    for name in settings.samplers:
        samplers.get(name)  # one line naming the known samplers if unknown
    model.sigmas(max(settings.steps), settings.grid)  # an unknown grid: one line, before the real features
    if settings.features not in FEATURE_NETWORKS:
        raise UndiffuseError(f"unknown feature network {settings.features!r}; choose {', '.join(FEATURE_NETWORKS)}")


def _recogniser(model: LoadedModel, settings: EvalSettings):
    """The classifier that scores class-conditional samples, or None when none fits this model."""
    if not model.num_classes:
        return None
    from .classifier import load_classifier
    try:
        clf = load_classifier(settings.classifier)
    except UndiffuseError:
        return None
    args = clf.config.get("args", {})
    fits = (clf.head[-1].out_features == model.num_classes
            and args.get("in_channels", 1) == model.config.data.channels
            and args.get("image_size", 32) == model.config.data.image_size)
    return clf if fits else None


def score(real: Tensor, fake: Tensor, k: int = 3) -> Scores:
    """FID, KID (mean ± std over subsets) and precision / recall between two feature sets."""
    kid, kid_std = kernel_distance(real, fake, subset_size=min(1000, len(real), len(fake)))
    precision, recall = precision_recall(real, fake, k)
    return Scores(fid_from_features(real, fake), kid, kid_std, precision, recall)


def _accuracy(clf, images: Tensor, labels: Tensor, names: list[str]) -> tuple[float, dict[str, float]]:
    predicted = clf.predict(images)
    per_class = {name: float((predicted[labels == i] == i).double().mean())
                 for i, name in enumerate(names) if (labels == i).any()}
    return float((predicted == labels).double().mean()), per_class


def image_likelihood(model: LoadedModel, images: Tensor, labels: Tensor | None, settings: EvalSettings,
                     progress: bool = True) -> dict[str, Any]:
    """Bits/dim of held-out images: Ho et al.'s VLB (VP chains only) and the probability-flow ODE (Hutchinson).

    A class-conditional model is scored on −log p(x | its true class), which is lower than the unconditional
    −log p(x) that papers on unconditional models report.
    """
    cond = labels if model.num_classes else None
    lo, hi = sigma_range(model.config)
    out: dict[str, Any] = {"n": len(images), "conditional": cond is not None}
    g = torch.Generator().manual_seed(settings.seed)
    schedule = build_schedule(model.config)
    if schedule is not None:
        vlb = vlb_bits_per_dim(model.denoiser, schedule, images, cond, generator=g, progress=progress,
                               timesteps=settings.vlb_timesteps or None)
        out["vlb"] = {"bits_per_dim": vlb.bits_per_dim, "prior": vlb.prior, "diffusion": vlb.diffusion,
                      "decoder": vlb.decoder, "timesteps": settings.vlb_timesteps or schedule.T,
                      "stderr": float(vlb.per_image.std() / len(images) ** 0.5) if len(images) > 1 else None}
    ode = ode_bits_per_dim(model.denoiser, images, lo, hi, cond=cond, rtol=settings.ode_rtol, atol=settings.ode_rtol,
                           generator=g, progress=progress)
    out["ode"] = {"bits_per_dim": ode.bits_per_dim, "nfe": ode.nfe, "rtol": settings.ode_rtol,
                  "stderr": float(ode.per_image.std() / len(images) ** 0.5) if len(images) > 1 else None}
    return out


def real_features(ref: Reference, settings: EvalSettings, extract: Callable[[Tensor], Tensor],
                  cache_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """The features of both real sets of ``ref``, computed once per feature network and cached."""
    tag = f"{ref.key}-{settings.features}-{settings.classifier if settings.features == 'classifier' else ''}"
    real_a = cached_features(tag + "-a", ref.a, extract, cache_dir)
    return real_a, cached_features(tag + "-b", ref.b, extract, cache_dir)


def evaluate(model: LoadedModel, settings: EvalSettings, cache_dir: str | None = None,
             progress: bool = True) -> Evaluation:
    """Measure every (sampler, steps) of ``settings`` on ``model``; the real set's features are cached."""
    settings = for_model(model, settings)
    _check(model, settings)
    ref: Reference = reference_set(model.config, settings.n, seed=settings.seed)
    extract = feature_network(settings, progress=progress)
    real_a, real_b = real_features(ref, settings, extract, cache_dir)
    floor = score(real_a, real_b, settings.k)
    clf = _recogniser(model, settings)
    floor_accuracy = _accuracy(clf, ref.a, ref.labels_a, model.class_names)[0] if clf is not None else None
    guidance = settings.guidance if settings.guidance is not None else model.config.sample.guidance
    guided = (bool(model.num_classes) or settings.autoguide is not None) and guidance not in (0.0, 1.0)
    interval = card_interval(model, settings.guidance_interval) if guided else None

    guide = load_guide(model, settings.autoguide)

    training = _training_sounds(model)
    rows = []
    plan = [(s, k) for s in settings.samplers for k in settings.steps]
    counters = [_NetworkCounter(m.denoiser) for m in (model, guide) if m is not None]  # the guide's calls count too
    try:
        for name, steps in tqdm(plan, desc="evaluate", unit="setting", disable=not progress):
            req = SampleRequest(n=settings.n, seed=settings.seed, sampler=name, steps=steps,
                                grid=settings.grid, guidance=guidance,
                                guidance_interval=interval, batch_size=settings.batch_size,
                                **{k: getattr(settings, k) for k in SAMPLING_OPTIONS})
            for counter in counters:
                counter.rows = 0
            t0 = time.perf_counter()
            images, labels = generate(model, req, progress=progress, guide=guide)
            seconds = time.perf_counter() - t0
            images = as_judged(model, images)
            nfe = sum(counter.rows for counter in counters) / settings.n
            row = Row(name, steps, nfe, seconds, score(real_a, extract(images), settings.k))
            if clf is not None and labels is not None:
                row.accuracy, row.per_class = _accuracy(clf, images, labels, model.class_names)
            if training is not None:   # are the clips new? nearest training clip, against held-out real clips'
                row.novelty = asdict(novelty(images.flatten(1), training, ref.a.flatten(1)))
            rows.append(row)
    finally:
        for counter in counters:
            counter.close()

    likelihood = None
    if settings.likelihood:
        m = min(settings.likelihood, settings.n)
        likelihood = image_likelihood(model, ref.a[:m], ref.labels_a[:m], settings, progress)

    environment = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                   "date": time.strftime("%Y-%m-%d %H:%M")}
    return Evaluation(model.source, settings.n, ref.source, settings.features, guidance if model.num_classes else None,
                      interval, settings.grid, floor, floor_accuracy, rows, asdict(settings), likelihood, environment)
