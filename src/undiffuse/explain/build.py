"""``undiffuse explain``: compute every picture and number of the page from the real process and a
real trained model, then write DIR/index.html with the PNG/GIF files beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..data.folder import load_image_tensor
from ..errors import UndiffuseError
from ..images import make_grid, save_png, to_uint8
from ..models import LoadedModel, load_model
from ..plots import save_figure
from ..process import DiscreteSchedule
from . import encoding, forward, latent, physics, reverse
from .maths import maths_section
from .pixels import pixels_section
from .prompt import prompt_section
from .reverse_steps import reverse_steps_section
from .page import Picture, Section, Slider, render

DISPLAY = 96           # pixels of the forward-process pictures
CHAIN_TS = (0, 50, 100, 200, 300, 500, 700, 1000)


def load_display_image(path: str | Path, channels: int, size: int = DISPLAY) -> Tensor:
    """A user's image, centre-cropped and resized, as (C, size, size) in [-1, 1]; one-line error if unreadable."""
    return load_image_tensor(path, size, channels, error="cannot use --image")


def enlarge(img: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour enlargement of (C, h, w) by an integer factor, so pixels stay visible as pixels."""
    return torch.nn.functional.interpolate(img[None].float(), scale_factor=factor, mode="nearest")[0]


def save_gif(path: Path, frames: Tensor, size: int, ms: int = 60, hold: int = 15) -> Path:
    """An endlessly looping GIF of (F, C, H, W) frames in [-1, 1], enlarged to about ``size`` pixels,
    the last frame held ``hold`` times."""
    factor = max(1, size // frames.shape[-1])
    pils = [Image.fromarray(to_uint8(enlarge(f, factor))).convert("P") for f in frames.clamp(-1, 1)]
    pils += [pils[-1]] * hold
    pils[0].save(path, save_all=True, append_images=pils[1:], duration=ms, loop=0, optimize=True)
    return path


def _fig(out: Path, name: str, fig, params: dict) -> str:
    save_figure(fig, out / name, params)
    return name


def build_explainer(model: str | LoadedModel = "fashion-mnist", image: str | Path | None = None,
                    out: str | Path = "out/explain", physics_seconds: float = 30.0, seed: int = 0,
                    progress: bool = True, sound: str | LoadedModel | None = None,
                    video: str | LoadedModel | None = None, text: str | LoadedModel | None = None) -> Path:
    """Write ``out``/index.html and its pictures; returns the page's path. The numbers go to explain.json.
    ``sound``: a sound model whose section (a real clip, noised, a reverse process, each with a player) is added;
    ``video``: a video model whose section (a clip noised frame by frame, a whole clip's reverse process) is;
    ``text``: a text-conditioned model whose section on how a prompt steers is added (``model`` itself, if it is
    text-conditioned)."""
    out = Path(out)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    m = load_model(model) if not isinstance(model, LoadedModel) else model
    if m.config.data.image_size is None or m.meta.get("dim") is not None or m.space.kind in ("spectrogram", "video"):
        raise UndiffuseError(f"{m.source} is not an image model; explain needs one (e.g. fashion-mnist), and takes "
                             "a sound model as --sound and a video model as --video")
    heard = (load_model(sound) if not isinstance(sound, LoadedModel) else sound) if sound is not None else None
    seen = (load_model(video) if not isinstance(video, LoadedModel) else video) if video is not None else None
    if m.text_conditioned:
        text = m
    prompted = (load_model(text) if not isinstance(text, LoadedModel) else text) if text is not None else None
    if prompted is not None and not prompted.text_conditioned:
        raise UndiffuseError(f"{prompted.source} is not text-conditioned; the section on prompts needs a model "
                             "that takes one (e.g. emoji-dit)")
    channels = m.config.data.channels
    t_start = time.perf_counter()
    numbers: dict = {"model": m.source}
    extra = sum(x is not None for x in (heard, seen, prompted))
    steps = tqdm(total=12 + extra, desc="explain", unit="section", disable=not progress)
    numbers["section_seconds"] = seconds = {}  # what each section cost to compute, for the page's build time
    clock = [t_start]

    def done(name: str | None = None) -> None:
        now = time.perf_counter()
        seconds[name or sections[-1].id] = round(now - clock[0], 2)
        clock[0] = now
        if name is None:
            steps.update()

    try:
        train, train_labels = reverse.training_images(m)
        train_note = ""
    except (UndiffuseError, OSError) as e:
        train, train_labels, train_note = None, None, f"(The model's training images are not on this machine: {e}.)"
    if image is not None:
        shown = load_display_image(image, channels)
        image_note = f"your image <code>{Path(image).name}</code>"
    elif train is not None:
        shown, image_note = train[0], "the first training image of the model"
    else:
        shown = reverse.reverse_path(m, reverse.request(m, seed=seed)).final
        image_note = "an image the model drew"
    params = {"model": m.source, "seed": seed}
    real, real_label, real_note = encoding.model_image(m, train[0] if train is not None else shown, image)
    if real_label is None and m.num_classes and train_labels is not None and image is None:
        real_label = int(train_labels[0]) if int(train_labels[0]) >= 0 else None
    sections = []
    done("setup")

    # 1. physics -------------------------------------------------------------------------------
    ph = physics.physics(shown, seconds=physics_seconds, seed=seed, progress=progress)
    numbers["physics"] = {"train_seconds": ph.run.seconds, "train_steps": ph.run.steps}
    sections.append(Section("physics", "Diffusion as in physics", [
        "Drop ink into water and its particles wander off, each on its own random path, until the ink is "
        f"spread evenly. Here the ink is {image_note}: its pixels became {len(ph.points):,} particles, placed "
        "where the image has ink. The forward process moves every particle by a little Gaussian noise, step "
        "after step, until the particles form a Gaussian cloud and nothing of the shape is left.",
        "Run backwards, physics would not bring the ink together again. A diffusion model learns how: a small "
        f"network, trained here for {ph.run.seconds:.0f} s ({ph.run.steps:,} steps) on these particles, "
        "estimates for any blurred cloud where the particles came from. Starting from fresh Gaussian particles "
        "and following it step by step (bottom row, right to left) gathers them back into the shape: new "
        "particles, not the old ones."],
        [Picture(_fig(out, "physics.png", physics.plot_physics(ph), params),
                 "Top: the forward process on the image's particles. Bottom: the learned reverse process.")], level=1))
    done()

    # 2. the chain -----------------------------------------------------------------------------
    linear = DiscreteSchedule.from_name("linear")
    chain = forward.chain_vs_closed_form(shown, linear, list(CHAIN_TS), seed=seed)
    numbers["chain"] = chain.rows
    strip = torch.cat([torch.stack(list(chain.chained)), torch.stack(list(chain.closed))])
    save_png(out / "chain.png", make_grid(strip, nrow=len(chain.ts)), {"t": list(chain.ts), **params},
             scale=max(1, DISPLAY // shown.shape[-1]))
    save_gif(out / "forward.gif", chain.frames, 192)
    rows = [[str(r["t"]), f"{r['alpha_bar']:.4f}", f"{r['expected_var']:.4f}", f"{r['chain_var']:.4f}",
             f"{r['closed_var']:.4f}"] for r in chain.rows]
    sections.append(Section("chain", "A Markov chain of small noise steps", [
        "The forward process is a chain of T = 1000 small steps. Step t keeps √(1-β<sub>t</sub>) of the image "
        "and adds Gaussian noise of variance β<sub>t</sub>: x<sub>t</sub> = √(1-β<sub>t</sub>) x<sub>t-1</sub> "
        "+ √β<sub>t</sub> ε. Each β is tiny (the linear schedule goes from 0.0001 to 0.02), so each step "
        "changes the image very little; why step by step, then? Because the reverse of a small step is "
        "nearly Gaussian too, and a network can learn it; one big jump from noise to image could not be "
        "undone in one Gaussian step.",
        "Chaining Gaussians gives a Gaussian, so x<sub>t</sub> can also be drawn in one shot: "
        "x<sub>t</sub> = √ᾱ<sub>t</sub> x<sub>0</sub> + √(1-ᾱ<sub>t</sub>) ε with ᾱ<sub>t</sub> the product of "
        "the (1-β). Training uses this closed form to jump to any t. Top row: the image after t chained steps; "
        "bottom row: the closed form at the same t. The table measures both on this image: the variance of "
        "x<sub>t</sub> - √ᾱ<sub>t</sub> x<sub>0</sub> against 1-ᾱ<sub>t</sub>, over "
        f"{chain.rows[-1]['values']:,} pixel values ({chain.rows[-1]['values'] // shown.numel()} independent "
        "runs of the chain)."],
        [Picture("chain.png", f"Top: t chained steps, t = {', '.join(map(str, chain.ts))}. Bottom: one-shot "
                 "closed form at the same t.", pixels=True),
         Picture("forward.gif", "The chain, every 10th step, as an animation.", pixels=True),
         Picture(_fig(out, "schedules.png", forward.plot_schedules(), params),
                 "The linear (DDPM) and cosine (improved DDPM) schedules: β, ᾱ and the signal-to-noise ratio. "
                 "The cosine schedule destroys information more evenly over t.")],
        (["t", "ᾱ_t", "1-ᾱ_t", "chain: measured variance", "closed form: measured variance"], rows), level=2))
    done()

    # 3. two pixels ----------------------------------------------------------------------------
    two = forward.two_pixel_walks(seed=seed)
    noise_fig, noise_stats = forward.plot_noise(seed=seed)
    numbers["two_pixels"] = {"rows": two.rows, "noise": noise_stats}
    rows = [[str(r["t"]), f"{r['expected_var']:.4f}", f"{r['var']:.4f}",
             "(" + ", ".join(f"{v:+.3f}" for v in r["expected_mean"]) + ")",
             "(" + ", ".join(f"{v:+.3f}" for v in r["mean"]) + ")"] for r in two.rows]
    n_chains = len(next(iter(two.clouds.values())))
    sections.append(Section("two-pixels", "What Gaussian noise is: the two-pixel image", [
        f"Take an image of two pixels, with values {two.pixels[0]} and {two.pixels[1]}. Scaled to [-1, 1] it "
        f"is one point in the plane: ({two.start[0]:+.3f}, {two.start[1]:+.3f}). A noise step shrinks the "
        "point towards the origin a little and draws the next point from a round Gaussian around it "
        "(left): each pixel gets its own independent noise, so the two coordinates move independently.",
        "Step after step, the point does a random walk with a drift towards the origin (middle). Run "
        f"{n_chains:,} such chains and their cloud spreads out and settles into N(0, I) whatever the start "
        "(right). The table compares the chains' measured variance per pixel with 1-ᾱ<sub>t</sub> and their "
        "mean with √ᾱ<sub>t</sub> x<sub>0</sub>.",
        f"A real image has many pixels, and each gets such noise. The noise image below has mean "
        f"{noise_stats['mean']:+.3f}, standard deviation {noise_stats['std']:.3f} and a correlation of "
        f"{noise_stats['neighbour_correlation']:+.3f} between neighbouring pixels: no splats, no structure."],
        [Picture(_fig(out, "two-pixels.png", forward.plot_two_pixels(two), params),
                 "The two-pixel image as a point: one step, one chain, many chains."),
         Picture(_fig(out, "noise.png", noise_fig, params), "Gaussian noise, pixel by pixel.")],
        (["t", "1-ᾱ_t", "measured variance", "√ᾱ_t x₀", "measured mean"], rows), level=3))
    done()
    sections.append(pixels_section(real, real_note, out, params, numbers, seed))  # 3b. per pixel, not splats
    done()

    # 4. the U-Net -----------------------------------------------------------------------------
    label = 0 if m.num_classes else None
    if m.num_classes and train_labels is not None and image is None and int(train_labels[0]) >= 0:
        label = int(train_labels[0])  # the class of the image shown above
    path = reverse.reverse_path(m, reverse.request(m, seed=seed, label=label, sampler="ddim", steps=50,
                                                   grid="trailing"))
    frames, labels = [], []
    for i, s in enumerate(path.sigmas):
        panel = torch.cat([path.x[i], path.x0_hat[i], (path.eps_hat[i] / 3).clamp(-1, 1)], dim=2)
        name = f"frames/reverse_{i:03d}.png"
        Image.fromarray(to_uint8(enlarge(panel, 6))).save(out / name)
        frames.append(name)
        labels.append(f"step {i + 1}/{len(path.sigmas)}, σ = {s:.3g}")
    save_gif(out / "reverse.gif", torch.cat([path.x, path.final[None]]), 192)
    net = m.denoiser.net
    pictures = [Picture(_fig(out, "reverse.png", reverse.plot_reverse_strip(path), params),
                        "The reverse process at a few of its 50 DDIM steps."),
                Slider("reverse-slider", frames, labels, "Move the slider through the 50 steps: "
                       "left x<sub>t</sub>, middle x̂<sub>0</sub>, right ε̂."),
                Picture("reverse.gif", "The reverse process as an animation: noise becomes an image.", pixels=True)]
    if hasattr(net, "down") and hasattr(net, "up"):
        stages = reverse.unet_stages(net, m.space.shape)
        n_params = sum(p.numel() for p in net.parameters())
        pictures.append(Picture(_fig(out, "unet.png", reverse.plot_unet(stages, n_params), params),
                                "The shape of the network, read from the model itself."))
        numbers["unet"] = {"parameters": n_params, "stages": [[s.name, list(s.shape)] for s in stages]}
    dit = m.config.model.backbone == "dit"
    sections.append(Section("unet", f"Undoing the noise with a {'transformer' if dit else 'U-Net'}", [
        "The network gets a noisy image x<sub>t</sub> and its noise level σ (and, here, a class or prompt) and "
        "estimates the clean image x̂<sub>0</sub>; equivalently the noise ε̂ = (x<sub>t</sub> - "
        "x̂<sub>0</sub>)/σ in it. At high noise the estimate is a blurry average of everything the image "
        "could be; the sampler moves x<sub>t</sub> a little towards it, the noise drops, and the next "
        "estimate is sharper. Fifty such steps of DDIM turn noise into an image.",
        ("The network is a diffusion transformer (DiT, Peebles &amp; Xie 2023): the input is cut into "
         f"{m.config.model.patch_size}×{m.config.model.patch_size} patches, each a token with its position; "
         "every block lets all tokens attend to each other (and to the prompt's tokens), and the noise level "
         "scales and shifts each block's normalised input (adaLN-Zero). The tokens are put back together into "
         "the estimate.") if dit else
        ("The network is a U-Net: convolutions at full resolution, down-sampling to coarser grids where "
         "attention can see the whole image, and back up, with skip connections carrying the fine detail "
         "across. The noise level enters every residual block by scale and shift.")], pictures, level=4))
    done()

    if m.space.kind == "latent":  # 4b. the latent space ----------------------------------------------------
        sections.append(_latent_section(m, train[0] if train is not None else path.final, path, out, params,
                                        numbers))
    sections.append(reverse_steps_section(m, out, params, numbers, seed, label))  # 4c. DDPM and DDIM step by step
    done()

    # 5. new images ----------------------------------------------------------------------------
    seeds = list(range(seed, seed + 8))
    if train is not None:
        new = reverse.new_images(m, train, seeds, label)
        numbers["new_images"] = {"distances": new.distances.tolist(), "train_spread": new.train_spread}
        save_png(out / "new.png", make_grid(torch.cat([new.samples, new.neighbours]), nrow=len(seeds)),
                 {"seeds": seeds, **params}, scale=3)
        text = (f"Top row: eight seeds, eight different images{_class_text(m, label)}. Bottom row: the nearest "
                f"of the {len(train):,} training images to each (pixel distance "
                f"{float(new.distances.min()):.1f} to {float(new.distances.max()):.1f}; for comparison, a training "
                f"image lies a median {new.train_spread:.1f} from its nearest other training image). The "
                "samples resemble what the model saw, but none is a copy.")
        pics = [Picture("new.png", "Top: samples from 8 seeds. Bottom: each one's nearest training image.",
                        pixels=True)]
    else:
        text, pics = train_note, []
    sections.append(Section("new", "Why the image is new", [
        "Sampling starts from fresh random noise: a different seed, a different starting point, and the "
        "deterministic or random path from it ends at a different image. The network never stored its "
        "training images; it learned, for every noise level, what images in general look like.", text], pics, level=1))
    done()

    # 6. samplers ------------------------------------------------------------------------------
    runs = reverse.compare_samplers(m, seed, label, (5, 10, 20, 50))
    numbers["samplers"] = [{"sampler": r.sampler, "steps": r.steps, "grid": r.grid, "seconds": r.seconds}
                           for r in runs]
    sections.append(Section("samplers", "DDPM against DDIM", [
        "DDPM (Ho et al. 2020) samples the reverse Markov chain: each step draws fresh noise, so the path is "
        "random and needs many small steps. DDIM (Song et al. 2021) uses the same network but takes a "
        "deterministic step: the same seed always gives the same image, and far fewer steps suffice. "
        "DPM-Solver++(2M) treats the same path as an ODE and solves it with a second-order method, sharper "
        "still at very few steps. All three start from the same noise; each picture carries its wall time."],
        [Picture(_fig(out, "samplers.png", reverse.plot_samplers(runs), params),
                 "One seed, three samplers, 5 to 50 steps (DDPM and DDIM on evenly spaced t, DPM-Solver++ on "
                 "the Karras σ grid).")], level=4))
    done()

    # 6b. the noise as an encoding, and interpolation -------------------------------------------------------
    sections.append(encoding.encoding_section(m, real, real_label, real_note, out, params, numbers, seed))
    done()
    sections.append(encoding.interpolation_section(m, label, out, params, numbers, seed))
    done()
    sections.append(maths_section(m, real, real_label, out, params, numbers, seed))  # level 5: the maths, computed
    done()

    # 7. guidance ------------------------------------------------------------------------------
    if m.num_classes and m.meta.get("unguided"):  # e.g. a diffusers class model trained without a null label
        paragraphs, pics = ["This model has classes but no \"no class\" token to guide against: it is shown at "
                            "guidance 1, the plain conditional model."], []
    elif m.num_classes:
        scales = (0.0, 1.0, 2.0, 4.0, 7.0)
        chosen = list(range(min(m.num_classes, 4)))
        grid = reverse.guidance_grid(m, seed, len(chosen), scales)
        names = [m.class_names[c] for c in chosen]
        paragraphs = ["Classifier-free guidance (Ho &amp; Salimans 2022) runs the network twice per step, with "
                      "the class and with the \"no class\" token it also learned, and extrapolates: "
                      "D = D(∅) + w (D(class) - D(∅)). w = 0 ignores the class, w = 1 is the plain "
                      "conditional model, larger w makes the class more pronounced and the images less varied. "
                      "A text prompt steers the same way, with a text embedding in place of the class.",
                      reverse.card_guidance_words(m)]
        pics = [Picture(_fig(out, "guidance.png", reverse.plot_guidance(grid, names, scales), params),
                        f"One seed per row (seeds {seed} to {seed + len(chosen) - 1}) at guidance scales w.")]
    else:
        paragraphs, pics = ["This model is unconditional: it has no class or prompt to be guided by."], []
    sections.append(Section("guidance", "Guidance", paragraphs, pics, level=4))
    done()
    if prompted is not None:  # 7b. a prompt steers ------------------------------------------------------
        sections.append(prompt_section(prompted, out, {**params, "model": prompted.source}, numbers, seed))
        done()

    if heard is not None:  # 8. sound -------------------------------------------------------------------
        from .sound import sound_section
        sections.append(sound_section(heard, out, {**params, "model": heard.source}, numbers, seed))
        done()
    if seen is not None:  # 9. video --------------------------------------------------------------------
        from .video import video_section
        sections.append(video_section(seen, out, {**params, "model": seen.source}, numbers, seed))
        done()
    steps.close()

    numbers["seconds"] = time.perf_counter() - t_start
    (out / "explain.json").write_text(json.dumps(numbers, indent=2) + "\n")
    page = render("How a diffusion model works", f"Every picture and number on this page was computed from the "
                  f"real forward process and the trained model <code>{m.source}</code>, just now.", sections,
                  f"Made by undiffuse explain in {numbers['seconds']:.0f} s.")
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _latent_section(m: LoadedModel, image: Tensor, path: reverse.ReversePath, out: Path, params: dict,
                    numbers: dict) -> Section:
    """An image, its latent channels and its decoding; the reverse process seen through the decoder."""
    view = latent.latent_view(m, image)
    numbers["latent"] = info = latent.latent_numbers(view)
    fig = latent.plot_decoded_reverse(path.sigmas, path.x, path.x0_hat, path.final)
    c, h, w = info["latent_shape"]
    return Section("latent", "Diffusion in a latent space", [
        "This model does not diffuse pixels. An autoencoder, trained first on the same images, codes each "
        f"{image.shape[-1]}×{image.shape[-2]} image as {c} maps of {h}×{w} numbers: {info['latent_values']:,} "
        f"values instead of {info['pixels']:,} ({info['compression']:.0f}× fewer), and decodes them back. The "
        f"latents are multiplied by a scale factor ({info['scale']:.3f}, measured on the training images) so that "
        "they have unit variance, as pixels in [-1, 1] roughly do; then the forward and reverse processes run on "
        "them exactly as on pixels (Rombach et al. 2022). The network works on a grid "
        f"{image.shape[-1] // w}× smaller in each direction, which makes every step cheaper.",
        f"Below: an image, its {c} latent channels (blue negative, red positive), and what the decoder makes of "
        f"them (PSNR {info['psnr_db']:.1f} dB against the image). Then the reverse process of the section above, "
        "seen through the decoder: each latent state x<sub>t</sub> and each estimate x̂<sub>0</sub> decoded to "
        "an image. Only the last one is decoded when sampling."],
        [Picture(_fig(out, "latent.png", latent.plot_latent(view), params),
                 "An image, its latent channels, and the decoded image."),
         Picture(_fig(out, "latent-reverse.png", fig, params),
                 "The reverse process in the latent space, decoded at a few of its steps.")], level=4)


def _class_text(m: LoadedModel, label: int | None) -> str:
    return f", all of class {m.class_names[label]}" if label is not None else ""
