"""Video quality without a video network: what a garment clip must get right, each part measured against real clips.

FVD (Unterthiner et al. 2018) needs an I3D network trained on Kinetics, which is not available offline; these
measures stand in for its parts on moving-sprites clips (``undiffuse.data.moving_sprites``), each one reported
beside the same figure for real clips of the generator, so that a number has its scale:

- **where**: the sprite is tracked per frame by its centre of brightness (background at −1 contributes nothing);
- **what**: a box of the sprite's size around that centre is resized to the 28×28 garment of Fashion-MNIST and
  padded to 32×32, so that the shipped garment classifier judges each frame: per-frame accuracy for the asked class,
  the share of clips whose every frame is the asked class, and the share whose frames all agree with each other;
- **identity**: the cosine of the classifier's features between the first frame and each later one;
- **motion**: the generator moves a sprite in a straight line at constant speed and a bounce only flips the sign
  of one axis' velocity, so each axis' speed |Δp| is constant: the mean change of per-axis speed between
  consecutive frames (pixels per frame) is the physics error, reported with the mean speed (a still sprite has no
  speed change but no speed either);
- **frames**: the Fréchet distance of the crops' classifier features against real crops, with its floor (two real
  sets of the same size).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UndiffuseError
from .fid import fid_from_features

log = logging.getLogger(__name__)


def _check(clips: Tensor) -> Tensor:
    if clips.ndim != 5 or clips.shape[2] != 1:
        raise UndiffuseError(f"video measures take grey clips (N, frames, 1, H, W) in [-1, 1], got "
                             f"{tuple(clips.shape)}")
    if clips.dtype == torch.uint8:
        return clips.float() / 127.5 - 1
    return clips.float().clamp(-1, 1)


def track(clips: Tensor) -> Tensor:
    """The sprite's centre of brightness (N, F, 2) as (row, column) in pixels; a black frame gives the centre."""
    clips = _check(clips)
    n, f, _, h, w = clips.shape
    mass = (clips[:, :, 0] + 1) / 2                                   # 0 on the background
    total = mass.sum((-1, -2)).clamp_min(1e-6)
    rows = torch.arange(h, dtype=mass.dtype) + 0.5
    cols = torch.arange(w, dtype=mass.dtype) + 0.5
    r = (mass.sum(-1) * rows).sum(-1) / total
    c = (mass.sum(-2) * cols).sum(-1) / total
    centre = torch.stack([r, c], -1)
    empty = (mass.sum((-1, -2)) < 1e-6)[..., None]
    return torch.where(empty, torch.tensor([h / 2, w / 2], dtype=mass.dtype), centre)


def garment_crops(clips: Tensor, centres: Tensor, sprite: int) -> Tensor:
    """(N·F, 1, 32, 32) in [-1, 1]: the ``sprite``-pixel box around each tracked centre as a Fashion-MNIST image
    (resized to 28×28 and padded by 2 on the background)."""
    clips = _check(clips)
    n, f, _, h, w = clips.shape
    frames = clips.reshape(n * f, 1, h, w)
    top = (centres.reshape(-1, 2) - sprite / 2).round().long()
    top[:, 0] = top[:, 0].clamp(0, h - sprite)
    top[:, 1] = top[:, 1].clamp(0, w - sprite)
    boxes = torch.stack([frames[i, :, r:r + sprite, c:c + sprite] for i, (r, c) in enumerate(top.tolist())])
    big = F.interpolate(boxes, size=(28, 28), mode="bilinear", align_corners=False)
    return F.pad(big, (2, 2, 2, 2), value=-1.0).clamp(-1, 1)


def motion_error(centres: Tensor) -> tuple[float, float]:
    """(mean |Δ|Δp|| per axis between consecutive frames, mean per-axis speed |Δp|), both in pixels per frame."""
    if centres.shape[1] < 3:
        raise UndiffuseError(f"motion needs at least 3 frames, got {centres.shape[1]}")
    speed = (centres[:, 1:] - centres[:, :-1]).abs()                 # (N, F-1, 2)
    return float((speed[:, 1:] - speed[:, :-1]).abs().mean()), float(speed.mean())


@dataclass
class ClipScores:
    """The measures of one set of clips (see the module docstring); accuracies are None without labels."""

    frame_accuracy: float | None
    all_frames_asked: float | None
    all_frames_agree: float
    identity: float
    motion_error: float
    speed: float

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def clip_measures(clips: Tensor, labels: Tensor | None, classifier, sprite: int) -> tuple[ClipScores, Tensor]:
    """The scores of ``clips`` (N, F, 1, H, W) for the asked ``labels`` (N,) and the crops' features (N·F, D)."""
    clips = _check(clips)
    n, f = clips.shape[:2]
    centres = track(clips)
    crops = garment_crops(clips, centres, sprite)
    predicted = classifier.predict(crops).reshape(n, f)
    feats = classifier.features(crops).double()
    unit = F.normalize(feats.reshape(n, f, -1), dim=-1)
    identity = float((unit[:, 1:] * unit[:, :1]).sum(-1).mean()) if f > 1 else 1.0
    agree = float((predicted == predicted[:, :1]).all(1).double().mean())
    frame_acc = asked = None
    if labels is not None:
        hit = predicted == labels.reshape(n, 1)
        frame_acc, asked = float(hit.double().mean()), float(hit.all(1).double().mean())
    error, speed = motion_error(centres)
    return ClipScores(frame_acc, asked, agree, identity, error, speed), feats


@dataclass
class VideoEvaluation:
    """Generated clips against real ones: the same measures for both, and the frames' Fréchet distance."""

    n: int
    generated: ClipScores
    real: ClipScores
    frame_fd: float
    frame_fd_floor: float

    def to_dict(self) -> dict:
        return {"n": self.n, "generated": self.generated.to_dict(), "real": self.real.to_dict(),
                "frame_fd": self.frame_fd, "frame_fd_floor": self.frame_fd_floor,
                "fvd": "not measured: FVD needs an I3D network, which is not available offline"}

    def table(self) -> str:
        """A Markdown table: one row per measure, generated beside real."""
        g, r = self.generated.to_dict(), self.real.to_dict()
        names = {"frame_accuracy": "frames recognised as the asked class", "all_frames_asked":
                 "clips with every frame the asked class", "all_frames_agree": "clips whose frames all agree",
                 "identity": "feature cosine, first frame vs later", "motion_error":
                 "per-axis speed change (px/frame)", "speed": "per-axis speed (px/frame)"}
        lines = [f"| measure (n = {self.n} clips) | generated | real |", "|---|---|---|"]
        for key, label in names.items():
            if g[key] is not None:
                lines.append(f"| {label} | {g[key]:.3f} | {r[key]:.3f} |")
        lines.append(f"| frame FD (classifier features) | {self.frame_fd:.2f} | {self.frame_fd_floor:.2f} (floor) |")
        return "\n".join(lines)


def compare_clips(generated: Tensor, labels: Tensor | None, real: Tensor, real_labels: Tensor | None,
                  held_out: Tensor, classifier, sprite: int) -> VideoEvaluation:
    """Score ``generated`` clips against ``real`` ones of the generator; ``held_out`` (more real clips) sets the FD
    floor. All clips (N, F, 1, H, W) in [-1, 1] or uint8."""
    gen_scores, gen_feats = clip_measures(generated, labels, classifier, sprite)
    real_scores, real_feats = clip_measures(real, real_labels, classifier, sprite)
    _, held_feats = clip_measures(held_out, None, classifier, sprite)
    return VideoEvaluation(len(generated), gen_scores, real_scores, fid_from_features(real_feats, gen_feats),
                           fid_from_features(real_feats, held_feats))


def sprite_views(garments: Tensor, sprite: int) -> Tensor:
    """What :func:`garment_crops` makes of Fashion-MNIST garments (N, 1, 28, 28) uint8 shown as moving sprites:
    each shrunk to ``sprite`` pixels, pasted on a dark canvas, tracked and cropped; uint8 (N, 1, 32, 32). The
    training images of the sprite judge (scripts/train_classifier.py --sprite)."""
    from ..data.moving_sprites import render, shrink
    small = shrink(garments, sprite)
    size = 2 * sprite
    at = torch.full((len(garments), 1, 2), sprite / 2)
    clips = render(small, at, size)
    crops = garment_crops(clips, track(clips), sprite)
    return ((crops + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


SPRITE_JUDGE = "moving-sprites-judge"


@dataclass
class AnimateEvaluation:
    """Image-to-video: clips made from the first frames of real clips, against those real clips. ``first_step`` is
    the tracked centre's mean per-axis move from the given frame to the next (pixels): the motion must start where
    the given frame has the sprite, at the generator's speeds; ``first_frame_error`` the largest pixel difference
    between the given frame and the clip's first frame (0: kept)."""

    n: int
    first_frame_error: float
    generated: ClipScores
    real: ClipScores
    first_step: float
    real_first_step: float

    def to_dict(self) -> dict:
        return {"n": self.n, "first_frame_error": self.first_frame_error, "generated": self.generated.to_dict(),
                "real": self.real.to_dict(), "first_step": self.first_step, "real_first_step": self.real_first_step}

    def table(self) -> str:
        g, r = self.generated, self.real
        return "\n".join([
            f"| image-to-video (n = {self.n}, first frames of real clips) | generated | real |", "|---|---|---|",
            f"| given frame kept (largest pixel error) | {self.first_frame_error:.2g} | 0 |",
            f"| centre's move from the given frame to the next (px, per axis) | {self.first_step:.3f} "
            f"| {self.real_first_step:.3f} |",
            f"| per-axis speed change (px/frame) | {g.motion_error:.3f} | {r.motion_error:.3f} |",
            f"| frames recognised as the given garment's class | {g.frame_accuracy:.3f} | {r.frame_accuracy:.3f} |",
            f"| feature cosine, first frame vs later | {g.identity:.3f} | {r.identity:.3f} |"])


def evaluate_animate(model, n: int = 100, sampler: str | None = None, steps: int | None = None,
                     guidance: float | None = None, seed: int = 0, resample: int | None = None,
                     guide: float | None = None, progress: bool = True) -> AnimateEvaluation:
    """Animate the first frames of ``n`` real test clips of the generator (each with its clip's class;
    ``resample`` and ``guide`` as :func:`~undiffuse.tasks.video.animate`, its defaults when None) and judge the
    clips as :func:`evaluate_video` does, beside the real clips they started from."""
    from tqdm.auto import tqdm

    from ..data.moving_sprites import moving_sprites
    from ..sampling import SampleRequest
    from ..tasks.video import GUIDE, RESAMPLE, animate
    from .classifier import load_classifier

    d, s = model.config.data, model.config.sample
    sprite = d.image_size // 2
    real = moving_sprites(n, frames=d.frames, size=d.image_size, sprite=sprite, split="test", seed=seed + 3)
    real_clips = _check(real.clips)
    made = []
    for i in tqdm(range(n), desc="image-to-video", unit="clip", disable=not progress):
        req = SampleRequest(n=1, seed=seed + i, sampler=sampler or s.sampler, steps=steps or s.steps, grid=s.grid,
                            label=int(real.labels[i]) if model.num_classes else None,
                            guidance=s.guidance if guidance is None else guidance)
        made.append(animate(model, real_clips[i, 0], req, resample=RESAMPLE if resample is None else resample,
                            guide=GUIDE if guide is None else guide)[0])
    clips = torch.stack(made)
    judge = load_classifier(SPRITE_JUDGE)
    gen_scores, _ = clip_measures(clips, real.labels, judge, sprite)
    real_scores, _ = clip_measures(real_clips, real.labels, judge, sprite)

    def first_step(c: Tensor) -> float:
        centres = track(c)
        return float((centres[:, 1] - centres[:, 0]).abs().mean())

    error = float((clips[:, 0] - real_clips[:, 0]).abs().max())
    return AnimateEvaluation(n, error, gen_scores, real_scores, first_step(clips), first_step(real_clips))


def evaluate_video(model, n: int = 500, sampler: str | None = None, steps: int | None = None,
                   guidance: float | None = None, seed: int = 0, batch_size: int = 32,
                   progress: bool = True) -> VideoEvaluation:
    """``n`` clips of a moving-sprites video ``model`` (classes in turn, seeds seed…seed+n−1, its recipe's
    sampler, steps, grid and guidance unless given) against ``n`` real test-split clips of the generator, the FD
    floor from ``n`` more; judged by the shipped sprite judge."""
    from ..data.moving_sprites import moving_sprites
    from ..sampling import SampleRequest, generate
    from .classifier import load_classifier

    if model.space.kind != "video" or model.config.data.name != "moving_sprites":
        raise UndiffuseError(f"{model.source}: the video measures know the physics of moving sprites only; this "
                             f"model is a {model.space.kind} model of {model.config.data.name!r}")
    if n < 2:
        raise UndiffuseError(f"n must be at least 2, got {n}")
    d, s = model.config.data, model.config.sample
    sprite = d.image_size // 2
    req = SampleRequest(n=n, seed=seed, sampler=sampler or s.sampler, steps=steps or s.steps, grid=s.grid,
                        guidance=s.guidance if guidance is None else guidance, batch_size=batch_size)
    clips, labels = generate(model, req, progress=progress)
    real = moving_sprites(n, frames=d.frames, size=d.image_size, sprite=sprite, split="test", seed=seed + 1)
    held = moving_sprites(n, frames=d.frames, size=d.image_size, sprite=sprite, split="test", seed=seed + 2)
    judge = load_classifier(SPRITE_JUDGE)
    if judge.config.get("sprite") != sprite:
        log.warning("the sprite judge learned %s-pixel sprites; this model's are %d: its verdicts are rougher",
                    judge.config.get("sprite"), sprite)
    return compare_clips(clips, labels if model.num_classes else None, real.clips,
                         real.labels if model.num_classes else None, held.clips, judge, sprite)
