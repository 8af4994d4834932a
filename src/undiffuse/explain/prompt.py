"""The prompt steers: how a text prompt turns noise into what was asked, computed on a text-conditioned model.

Three views of one mechanism: the same seed under several prompts (the noise is the same, the prompt decides);
the conditional and unconditional estimates and their classifier-free guided mix at a few steps (Ho & Salimans
2022: D = D(∅) + w (D(prompt) - D(∅))); and the cross-attention maps of the prompt's words over the image as it
forms (the attention of every image token to every text token, as Prompt-to-Prompt reads them, Hertz et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models import LoadedModel
from ..nets.dit import CrossAttention
from ..plots import save_figure
from ..sampling import generate
from .page import Picture, Section
from .reverse import _show, request

PROMPTS = ("a red heart", "a blue heart", "a yellow star", "a green apple", "a smiling face", "a red car")
STEERED = "a red heart"             # the prompt whose guidance and attention are shown step by step
SHOWN_STEPS = 5                     # steps of the reverse process shown (spread over it)
SKIPPED_WORDS = {"a", "an", "the", "of", "with", "and", "in", "on"}
SPECIAL_TOKENS = {"[CLS]", "[SEP]", "[PAD]"}


@dataclass
class GuidedSteps:
    """At a few steps of one guided reverse process: σ, the unconditional, conditional and guided x̂₀ (decoded)."""

    sigmas: list[float]
    uncond: Tensor     # (K, C, H, W)
    cond: Tensor       # (K, C, H, W)
    guided: Tensor     # (K, C, H, W)
    final: Tensor      # (C, H, W) the sample
    mix_error: float   # largest |guided mix - the sampler's own x̂₀| over the shown steps (in the model's space)
    direction: list[float]   # RMS of D(prompt) - D(∅) per shown step: how hard the prompt pulls


@dataclass
class WordMaps:
    """Cross-attention of the image tokens to each shown word, averaged over heads and blocks, per shown step."""

    words: list[str]
    maps: Tensor             # (W, K, h, w) attention to each word's tokens, summed over its word pieces
    mass: list[float]        # each word's share of all attention, averaged over steps


def prompt_words(model: LoadedModel, prompt: str) -> list[tuple[str, list[int]]]:
    """The prompt's content words and the positions of their word pieces in the encoder's token sequence."""
    tokenizer = model.text_encoder().tokenizer
    ids = tokenizer(prompt, truncation=True, max_length=model.config.data.text_length)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words: list[tuple[str, list[int]]] = []
    for i, piece in enumerate(pieces):
        if piece in SPECIAL_TOKENS:
            continue
        if piece.startswith("##") and words:
            words[-1] = (words[-1][0] + piece[2:], [*words[-1][1], i])
        else:
            words.append((piece, [i]))
    return [(w, pos) for w, pos in words if w not in SKIPPED_WORDS]


class AttentionRecorder:
    """Forward hooks on every cross-attention layer: the softmax weights of the last call, averaged over heads and
    layers, (B, N, L). Recomputed from the layer's own q and k, so the layer itself is unchanged."""

    def __init__(self, net: nn.Module):
        self.layers = [m for m in net.modules() if isinstance(m, CrossAttention)]
        self.sum: Tensor | None = None
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, layer: CrossAttention, inputs: tuple, output: Tensor) -> None:
        x, tokens, mask = inputs
        B, N, D = x.shape
        d = D // layer.heads
        q = layer.q(x.float()).reshape(B, N, layer.heads, d).transpose(1, 2)                       # (B, h, N, d)
        k = layer.kv(tokens.float()).reshape(B, -1, 2, layer.heads, d)[:, :, 0].transpose(1, 2)   # (B, h, L, d)
        scores = (q @ k.transpose(-1, -2)) / d**0.5                                                # (B, h, N, L)
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1).mean(1)                                                       # (B, N, L)
        self.sum = weights if self.sum is None else self.sum + weights
        self.calls += 1

    def take(self) -> Tensor:
        """The mean attention since the last take, (B, N, L)."""
        out = self.sum / self.calls
        self.sum, self.calls = None, 0
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def same_seed_prompts(model: LoadedModel, prompts: tuple[str, ...], seeds: tuple[int, ...]) -> Tensor:
    """(S, P, C, H, W): each seed under each prompt, with the model's own sampler, steps, grid and guidance."""
    rows = [torch.cat([generate(model, request(model, seed=s, prompt=p), progress=False)[0] for p in prompts])
            for s in seeds]
    return torch.stack(rows)


@torch.no_grad()
def guided_steps(model: LoadedModel, prompt: str, seed: int, shown: int = SHOWN_STEPS,
                 recorder: AttentionRecorder | None = None) -> tuple[GuidedSteps, list[Tensor]]:
    """One guided reverse process; at ``shown`` of its steps the network is called again with the prompt and with
    the empty prompt, and the two mixed by the guidance weight; with ``recorder`` the conditional call's
    cross-attention is kept, one (N, L) map per shown step."""
    # fp32: the mix below is recomputed exactly; plain guidance at every σ, whatever the card's interval, projection
    # or ε scaling, so that the mix shown is D(∅) + w (D(prompt) - D(∅)) and is what the sampler followed
    req = request(model, seed=seed, prompt=prompt, precision="fp32", guidance_interval=(0.0, math.inf),
                  guidance_parallel=1.0, eps_scale=1.0)
    states: list[tuple[float, Tensor, Tensor]] = []
    final, _ = generate(model, req, progress=False,
                        callback=lambda i, s, x, x0: states.append((float(torch.as_tensor(s).flatten()[0]), x, x0)))
    picks = sorted(set(np.linspace(0, len(states) - 1, shown).round().astype(int).tolist()))
    encoder = model.text_encoder()
    text, null = encoder([prompt]).as_cond(), encoder([""]).as_cond()
    w = req.guidance
    parts: dict[str, list[Tensor]] = {"uncond": [], "cond": [], "guided": []}
    maps, errors, direction, sigmas = [], [], [], []
    for i in picks:
        sigma, x, x0_sampler = states[i]
        s = torch.full((len(x),), sigma)
        d_u = model.denoiser(x, s, null)
        d_c = model.denoiser(x, s, text)
        if recorder is not None:
            maps.append(recorder.take()[0])
        mix = d_u + w * (d_c - d_u)
        errors.append(float((mix - x0_sampler).abs().max()))
        direction.append(float((d_c - d_u).pow(2).mean().sqrt()))
        sigmas.append(sigma)
        for key, v in (("uncond", d_u), ("cond", d_c), ("guided", mix)):
            parts[key].append(model.space.decode(v)[0])
    return GuidedSteps(sigmas, torch.stack(parts["uncond"]), torch.stack(parts["cond"]), torch.stack(parts["guided"]),
                       final[0], max(errors), direction), maps


def word_maps(model: LoadedModel, prompt: str, maps: list[Tensor]) -> WordMaps:
    """Each content word's attention map per step, on the grid of image tokens."""
    net = model.denoiser.net
    h, w = (model.space.shape[1] // net.patch_size, model.space.shape[2] // net.patch_size)
    words = prompt_words(model, prompt)
    stack = torch.stack(maps)                                                   # (K, N, L)
    per_word = torch.stack([stack[:, :, pos].sum(-1) for _, pos in words])      # (W, K, N)
    mass = [float(v) for v in per_word.mean(dim=(1, 2))]                        # mean over steps and patches
    return WordMaps([wd for wd, _ in words], per_word.reshape(len(words), len(maps), h, w), mass)


def plot_prompts(images: Tensor, prompts: tuple[str, ...], seeds: tuple[int, ...]) -> Figure:
    S, P = images.shape[:2]
    fig = Figure(figsize=(1.6 * P, 1.75 * S + 0.3), dpi=100, layout="constrained")
    axes = fig.subplots(S, P, squeeze=False)
    for r in range(S):
        for c in range(P):
            _show(axes[r, c], images[r, c])
            if r == 0:
                axes[r, c].set_title(f"“{prompts[c]}”", fontsize=8)
        axes[r, 0].set_ylabel(f"seed {seeds[r]}", fontsize=8)
    return fig


def plot_guided(g: GuidedSteps, w: float) -> Figure:
    K = len(g.sigmas)
    fig = Figure(figsize=(1.5 * (K + 1), 4.9), dpi=100, layout="constrained")
    axes = fig.subplots(3, K + 1)
    rows = (("D(x, σ, ∅)\nno prompt", g.uncond), ("D(x, σ, prompt)", g.cond), (f"guided, w = {w:g}", g.guided))
    for r, (label, images) in enumerate(rows):
        for c in range(K):
            _show(axes[r, c], images[c])
            if r == 0:
                axes[r, c].set_title(f"σ = {g.sigmas[c]:.3g}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
        _show(axes[r, K], g.final if r == 2 else torch.full_like(g.final, 1.0))
    axes[2, K].set_title("the sample", fontsize=8)
    return fig


def plot_attention(wm: WordMaps, g: GuidedSteps) -> Figure:
    W, K = wm.maps.shape[:2]
    fig = Figure(figsize=(1.5 * K, 1.6 * (W + 1)), dpi=100, layout="constrained")
    axes = fig.subplots(W + 1, K, squeeze=False)
    size = g.guided.shape[-1]
    for c in range(K):
        _show(axes[0, c], g.guided[c])
        axes[0, c].set_title(f"σ = {g.sigmas[c]:.3g}", fontsize=8)
        for r in range(W):
            m = torch.nn.functional.interpolate(wm.maps[r, c][None, None], size=(size, size), mode="bilinear")[0, 0]
            _show(axes[r + 1, c], g.guided[c])
            axes[r + 1, c].imshow(m.numpy(), cmap="inferno", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    axes[0, 0].set_ylabel("guided x̂₀", fontsize=8)
    for r, word in enumerate(wm.words):
        axes[r + 1, 0].set_ylabel(f"“{word}”", fontsize=9)
    return fig


def _card_refines(model: LoadedModel) -> str:
    """A sentence where the card guides otherwise than the plain mix shown (interval, projection, ε scaling)."""
    s = model.config.sample
    if not s.guidance_interval and s.guidance_parallel == 1.0 and s.eps_scale == 1.0:
        return ""
    return (" This picture guides plainly at every step; the model card's own samples refine that (its guidance "
            "interval, projection and ε scaling: <code>undiffuse info</code> lists them).")


def prompt_section(model: LoadedModel, out: Path, params: dict, numbers: dict, seed: int) -> Section:
    """Level 4: from a prompt to the image it asks for."""
    seeds = (seed, seed + 1)
    grid = same_seed_prompts(model, PROMPTS, seeds)
    save_figure(plot_prompts(grid, PROMPTS, seeds), out / "prompts.png", params)
    recorder = AttentionRecorder(model.denoiser.net)
    try:
        g, maps = guided_steps(model, STEERED, seed, recorder=recorder if recorder.layers else None)
    finally:
        recorder.close()
    w = request(model).guidance
    save_figure(plot_guided(g, w), out / "prompt-guidance.png", params)
    info = {"model": model.source, "prompts": list(PROMPTS), "seeds": list(seeds), "steered": STEERED,
            "guidance": w, "sigmas": g.sigmas, "mix_error": g.mix_error, "direction_rms": g.direction}
    pics = [Picture("prompts.png", "The same two seeds under six prompts: the starting noise is the same in each row; "
                    "the prompt decides what it becomes."),
            Picture("prompt-guidance.png", f"“{STEERED}”, seed {seed}: the network's estimate without the prompt, "
                    "with it, and the guided mix the sampler follows, at a few steps.")]
    attention_text = ("This model reads its prompt through the pooled embedding and joint attention; it has no "
                      "separate cross-attention maps to show.")
    if maps:
        wm = word_maps(model, STEERED, maps)
        save_figure(plot_attention(wm, g), out / "prompt-attention.png", params)
        info["attention_mass"] = dict(zip(wm.words, wm.mass, strict=True))
        pics.append(Picture("prompt-attention.png", "Where each image patch looks in the prompt: the cross-attention "
                            "to each word, averaged over heads and blocks, over the guided estimate."))
        attention_text = (
            f"Inside the network, every block has a cross-attention layer: each of the "
            f"{wm.maps.shape[-1] * wm.maps.shape[-2]} image patches forms a query and compares it with a key from "
            "every prompt token; the softmax of those scores says how much of each token's value the patch takes in "
            "(the picture above: one row per word, bright where the patches attend to it). Averaged over heads, "
            "blocks and the shown steps, the words take "
            + ", ".join(f"“{wd}” {100 * m:.0f} %" for wd, m in zip(wm.words, wm.mass, strict=True))
            + " of the attention; the rest goes to the start and end tokens, which carry the sentence as a whole.")
    numbers["prompt"] = info
    paragraphs = [
        "A text prompt enters the network as numbers. A frozen sentence encoder (all-MiniLM-L6-v2, a small "
        "transformer trained to place sentences of similar meaning near each other) turns the prompt into one "
        "384-number vector per word piece, and their average into one vector for the whole sentence. The network "
        "is trained on images with their captions, so it learns what the estimate x̂<sub>0</sub> should look like "
        "for a given caption; one caption in ten is replaced by the empty prompt, so the same network also learns "
        "the estimate with no prompt at all.",
        "The seed decides the starting noise, the prompt decides what the noise is turned into. In each row below "
        "the starting noise is the same; only the prompt changes. There is no noise image \"of\" a heart: every "
        "noise becomes a heart when the network is asked for one, and a star when asked for a star.",
        f"At each step the sampler calls the network twice, with the prompt and with the empty prompt, and moves "
        f"along the difference: D = D(∅) + w (D(prompt) - D(∅)) with w = {w:g} (classifier-free guidance, Ho &amp; "
        "Salimans 2022). Early, at large σ, the estimate without a prompt is a grey average of everything; the "
        "prompt's estimate already has a colour and a rough shape, and guidance exaggerates the difference. "
        f"The pull D(prompt) - D(∅) has an RMS of {g.direction[0]:.3f} at the first shown step and "
        f"{g.direction[-1]:.3f} at the last: late in the process the image is settled and the prompt has little "
        f"left to say. (Check: the mix computed here equals the sampler's own estimate to {g.mix_error:.1e}.)"
        + _card_refines(model),
        attention_text]
    return Section("prompt", "The prompt steers", paragraphs, pics, level=4)
