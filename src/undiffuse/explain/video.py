"""The video section of the explain page: a clip noised frame by frame, and the reverse process of a whole clip.

A video model diffuses a clip (frames, C, H, W) as one array (:mod:`undiffuse.spaces.video`): x_σ = x + σ ε with
the same σ in every frame and every pixel its own noise. The space-time network sees all frames at once, so the
reverse process settles the whole clip together: which garment, where it starts and how it moves.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..errors import UndiffuseError
from ..models import LoadedModel
from ..sampling import generate
from ..video_files import write_gif
from .page import Picture, Section
from .reverse import request

NOISE_SIGMAS = (0.1, 0.3, 1.0, 3.0)
REVERSE_SHOWN = 6


def real_clip(model: LoadedModel, seed: int = 0) -> tuple[Tensor, int, str]:
    """(clip (F, C, H, W) in [-1, 1], its class or -1, where it comes from): a moving-sprites test clip for a
    moving-sprites model, else one the model makes."""
    d = model.config.data
    if d.name == "moving_sprites":
        from ..data.moving_sprites import moving_sprites
        clips = moving_sprites(1, frames=d.frames, size=d.image_size, sprite=d.image_size // 2, split="test",
                               seed=seed)
        return clips.clips[0].float() / 127.5 - 1, int(clips.labels[0]), f"a real clip: {clips.captions[0]}"
    made, labels = generate(model, request(model, seed=seed), progress=False)
    return made[0], int(labels[0]) if labels is not None else -1, "a clip the model made"


def plot_rows(model: LoadedModel, clips: Tensor, titles: list[str]) -> Figure:
    """Clips (K, F, C, H, W) as film strips, one per row, with a title each."""
    strips = model.space.picture(clips.clamp(-1, 1))                      # (K, C, H, W')
    k, _, h, w = strips.shape
    fig = Figure(figsize=(min(12.0, 0.9 + w / 26), 0.35 + 1.0 * k * h / 32), dpi=100, layout="constrained")
    for ax, strip, title in zip(np.atleast_1d(fig.subplots(k, 1)), strips, titles, strict=True):
        img = ((strip.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    return fig


def video_section(model: LoadedModel, out, params: dict, numbers: dict, seed: int = 0) -> Section:
    """Section "Moving pictures": write its figures and GIFs into ``out`` and return it."""
    if model.space.kind != "video":
        raise UndiffuseError(f"--video needs a video model (data.frames > 0, e.g. configs/moving-sprites.toml); "
                             f"{model.source} runs in {model.space.kind} space")
    clip, label, source = real_clip(model, seed)
    frames = clip.shape[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(clip.shape, generator=g)
    noisy = torch.stack([clip + s * noise for s in NOISE_SIGMAS])
    plot_rows(model, torch.cat([clip[None], noisy]), ["the clip"] + [f"σ = {s:g} in every frame" for s in
                                                                     NOISE_SIGMAS]).savefig(out / "video-noised.png")
    write_gif(out / "video-clip.gif", clip, params)
    write_gif(out / "video-noised.gif", noisy[1].clamp(-1, 1), {**params, "sigma": NOISE_SIGMAS[1]})

    label = label if label >= 0 and model.num_classes else None
    rec: list[tuple[float, Tensor, Tensor]] = []
    req = request(model, seed=seed, label=label)
    final, _ = generate(model, replace(req, n=1), progress=False,
                        callback=lambda i, sigma, x_t, x0: rec.append((float(torch.as_tensor(sigma).flatten()[0]),
                                                                       x_t[0].clone(), x0[0].clone())))
    shown = sorted(set(np.linspace(0, len(rec) - 1, REVERSE_SHOWN).round().astype(int).tolist()))
    plot_rows(model, torch.stack([rec[k][1] for k in shown] + [final[0]]),
              [f"step {k + 1}: x_t at σ = {rec[k][0]:.3g}" for k in shown] + ["the sample"]
              ).savefig(out / "video-reverse.png")
    plot_rows(model, torch.stack([rec[k][2] for k in shown]),
              [f"step {k + 1}: the estimate x̂0" for k in shown]).savefig(out / "video-estimates.png")
    write_gif(out / "video-sample.gif", final[0], {**params, "sampler": req.sampler, "steps": req.steps})
    what = f"a clip of class {model.class_names[label]}" if label is not None else "a clip"
    numbers["video"] = {"model": model.source, "clip": source, "frames": frames, "noise_sigmas": list(NOISE_SIGMAS),
                        "reverse_steps": len(rec)}
    return Section("video", "Moving pictures: diffusion on video", [
        f"A video is a stack of frames: here {frames} frames of {clip.shape[-1]}×{clip.shape[-2]} pixels, one "
        f"array of {clip.numel():,} numbers. The model <code>{model.source}</code> diffuses it exactly as an image "
        "model diffuses one picture: the forward process adds Gaussian noise of the same σ to every frame, each "
        "pixel of each frame its own draw. Its network is factorised: convolutions and attention within each "
        "frame, then attention across the frames at every pixel, so that a frame can look at the others.",
        f"Below: {source}, then the same clip with noise of growing σ in every frame (the forward process). Then a "
        f"reverse process of the model, from pure noise to {what}, in {len(rec)} steps: the state x<sub>t</sub> "
        "at a few of them, and the network's estimate x̂<sub>0</sub> of the clean clip. All frames are denoised "
        "together: the garment, where it starts and its path appear in every frame at the same time, coarse "
        "first and detailed last, rather than frame after frame."],
        [Picture("video-clip.gif", f"{source}.", pixels=True),
         Picture("video-noised.gif", f"The clip at σ = {NOISE_SIGMAS[1]:g}, every frame.", pixels=True),
         Picture("video-noised.png", "The clip with noise of σ added to every pixel of every frame."),
         Picture("video-reverse.png", "The reverse process: the whole clip at a few of its steps."),
         Picture("video-estimates.png", "The estimate of the clean clip at the same steps."),
         Picture("video-sample.gif", "The sample.", pixels=True)], level=4)
