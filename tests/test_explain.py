"""`undiffuse explain`: the page is built from a tiny model, every section and picture is there, its
numbers are computed, and in headless Chromium every image loads and the slider steps through frames."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from typer.testing import CliRunner

from undiffuse.cli import app
from undiffuse.data.audio import read_wav_params
from undiffuse.evaluation.evaluate import image_likelihood
from undiffuse.explain.encoding import model_image
from undiffuse.explain.forward import chain_vs_closed_form, two_pixel_walks
from undiffuse.explain.maths import LIKELIHOOD_SETTINGS, held_out_images
from undiffuse.explain.reverse import training_images
from undiffuse.models import load_model
from undiffuse.explain.physics import image_to_points
from undiffuse.process import DiscreteSchedule

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["physics", "chain", "two-pixels", "per-pixel", "unet", "reverse-steps", "new", "samplers", "encoding",
            "interpolation", "guidance", "prompt", "sound", "video", "maths"]
LEVEL_OF = {"physics": 1, "new": 1, "chain": 2, "two-pixels": 3, "per-pixel": 3, "unet": 4, "reverse-steps": 4,
            "samplers": 4, "encoding": 4, "interpolation": 4, "guidance": 4, "prompt": 4, "sound": 4, "video": 4,
            "maths": 5}
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def page(tmp_path_factory, tone_run, video_run):
    tmp = tmp_path_factory.mktemp("explain")
    run = tmp / "run"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=30",
                                      "--set", "diffusion.parameterization='v'"])  # v: bounded x̂₀ at σ_max
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["explain", str(run), "--out", str(tmp / "page"), "--physics-seconds", "2",
                                      "--sound", str(tone_run), "--video", str(video_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "page" / "index.html"


def referenced_files(html: str) -> list[str]:
    files = re.findall(r'<img[^>]* src="([^"]+)"', html)
    for frames in re.findall(r"data-frames='([^']+)'", html):
        files += json.loads(frames.replace("&quot;", '"'))
    return files


def test_page_has_every_section_and_every_picture_decodes(page):
    html = page.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}" data-level="{LEVEL_OF[sid]}">' in html
    order = [int(v) for v in re.findall(r'<section id="[^"]+" data-level="(\d)"', html)]
    assert order == sorted(order) and set(order) == {1, 2, 3, 4, 5}       # sections by level, every level
    files = referenced_files(html)
    assert len(files) >= 12 + 20        # figures, GIFs, and the slider's frames
    for name in ("encoding.png", "interpolation.png", "pixels.png", "pixels-acf.png", "pixels-changed.png",
                 "order.png", "sde-ode.png", "vlb-terms.png", "prompts.png", "prompt-guidance.png",
                 "prompt-attention.png"):
        assert name in files
    with Image.open(page.parent / "pixels.png") as im:                  # true resolution: 4 images of 8×8, 2 px gaps
        assert im.size == (4 * 8 + 5 * 2, 8 + 2 * 2)
    for name in files:
        with Image.open(page.parent / name) as im:
            im.load()
            assert im.width > 0 and im.height > 0
    with Image.open(page.parent / "reverse.gif") as gif:
        assert gif.n_frames > 10
    for name in ("video-clip.gif", "video-noised.gif", "video-sample.gif"):   # the video section's clips
        assert name in files
        with Image.open(page.parent / name) as gif:
            assert gif.n_frames == 4
    sounds = re.findall(r'<audio controls preload="auto" src="([^"]+)"', html)
    assert len(sounds) >= 8 and "sound-clip.wav" in sounds and "sound-sample.wav" in sounds
    for name in sounds:
        wave, rate = sf.read(page.parent / name)
        assert rate == 4000 and wave.shape == (2048,) and np.isfinite(wave).all()
        assert read_wav_params(page.parent / name)["model"]
    assert "http://" not in html and "https://" not in html     # nothing to fetch


def test_page_numbers_are_computed(page):
    numbers = json.loads((page.parent / "explain.json").read_text())
    html = page.read_text()
    for row in numbers["chain"][1:]:         # chained steps and the closed form both give variance 1-ᾱ_t
        assert row["chain_var"] == pytest.approx(row["expected_var"], rel=0.05)
        assert row["closed_var"] == pytest.approx(row["expected_var"], rel=0.05)
        assert f"{row['chain_var']:.4f}" in html
    for row in numbers["two_pixels"]["rows"]:
        assert row["var"] == pytest.approx(row["expected_var"], rel=0.06)
        assert f"{row['var']:.4f}" in html
    assert abs(numbers["two_pixels"]["noise"]["neighbour_correlation"]) < 0.05
    px = numbers["per_pixel"]                      # per-pixel noise: neighbours uncorrelated; 3×3 splats: 2/3
    assert abs(px["neighbour_correlation"]) < 0.02 and abs(px["splat_neighbour_correlation"] - 2 / 3) < 0.03
    assert px["changed_min"] == px["changed_max"] == px["pixels"] == 64
    assert f"{px['neighbour_correlation']:+.4f}" in html and f"{px['splat_neighbour_correlation']:.3f}" in html
    enc = numbers["encoding"]                      # even a barely trained model's ODE can be run backwards
    assert enc["reconstruction_rms"] < enc["bound"] and enc["reconstruction_rms"] < enc["fresh_rms"] / 5
    assert f"{enc['reconstruction_rms']:.3f}" in html
    assert max(numbers["interpolation"]["endpoint_rms"]) < 1e-5      # the seeds' own images, to float32 rounding
    fresh = numbers["reverse_steps"]["fresh"]      # DDIM adds no fresh noise; DDPM's is N(0, 1)
    assert fresh["ddim"]["max_abs_fresh"] < 1e-4 and abs(fresh["ddpm"]["std"] - 1) < 0.15
    # level 5: bits/dim as `undiffuse evaluate --likelihood` computes them on the same images
    model = load_model(page.parent.parent / "run")
    real, label, _ = model_image(model, training_images(model)[0][0])
    images, labels = held_out_images(model, real, int(training_images(model)[1][0]), LIKELIHOOD_SETTINGS.likelihood)
    again = image_likelihood(model, images, labels, LIKELIHOOD_SETTINGS, progress=False)
    lik = numbers["maths"]["likelihood"]
    assert lik["vlb"]["bits_per_dim"] == pytest.approx(again["vlb"]["bits_per_dim"], rel=1e-6)
    assert lik["ode"]["bits_per_dim"] == pytest.approx(again["ode"]["bits_per_dim"], rel=1e-3)
    assert f"{lik['ode']['bits_per_dim']:.2f} bits/dim" in html
    assert set(numbers["maths"]["order"]) == {"ddim", "dpmpp_2m"}
    flows = numbers["maths"]["sde_ode"]           # the SDE and the ODE from the same noises end at other images
    assert flows["paired_rms"] > 0.01 and f"{flows['paired_rms']:.3f}" in html
    terms = numbers["maths"]["terms"]             # the bound's terms: the decoder, then steps up the chain
    assert terms["t"][0] == 0 and len(terms["t"]) > 20 and all(b > 0 for b in terms["bits"])
    assert f"{terms['summed_diffusion_bits']:.2f} bits/dim" in html
    prompt = numbers["prompt"]                    # the shipped text model by default: the guided mix recomputed
    assert prompt["model"] == "emoji-dit" and prompt["mix_error"] < 1e-4
    assert set(prompt["attention_mass"]) == {"red", "heart"} and 0 < sum(prompt["attention_mass"].values()) < 1
    assert numbers["video"]["frames"] == 4 and numbers["video"]["reverse_steps"] == 3
    assert numbers["video"]["clip"].startswith("a real clip: a ")          # a moving-sprites test clip


def test_two_pixel_variance_matches_one_minus_alpha_bar():
    s = DiscreteSchedule.from_name("linear")
    res = two_pixel_walks(schedule=s, n=4000, ts=(20, 200, 1000), seed=3)
    for row in res.rows:
        assert row["var"] == pytest.approx(1 - float(s.alpha_bars[row["t"] - 1]), rel=0.06)
    # a wrong chain (noise without the √(1-β) shrink) would not settle: its variance grows past 1
    assert res.rows[-1]["var"] < 1.1 and len(res.walk) == 1001


def test_chain_matches_closed_form_on_an_image():
    x0 = torch.rand(1, 16, 16) * 2 - 1
    res = chain_vs_closed_form(x0, DiscreteSchedule.from_name("cosine"), [0, 10, 300, 1000], seed=1)
    assert res.chained.shape == (4, 1, 16, 16) and torch.equal(res.chained[0], x0)
    for row in res.rows[1:]:
        assert row["chain_var"] == pytest.approx(row["expected_var"], rel=0.05)
        assert row["closed_var"] == pytest.approx(row["expected_var"], rel=0.05)


def test_image_to_points_follows_the_ink():
    img = -torch.ones(1, 20, 20)
    img[0, 2:6, 12:18] = 1.0                       # one bright bar, top right, on a dark background
    pts = image_to_points(img, n=2000)
    assert pts.shape == (2000, 2) and abs(float(pts.std()) - 1) < 0.05
    with pytest.raises(ValueError, match="blank"):
        image_to_points(torch.zeros(1, 8, 8))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_page_in_headless_chromium(page, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.goto(page.as_uri())
        tab.wait_for_load_state("load")
        broken = tab.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                              ".map(i => i.getAttribute('src'))")
        assert broken == []
        assert tab.evaluate("document.images.length") >= 12
        frame = tab.locator("#reverse-slider img")
        before = frame.get_attribute("src")
        slider = tab.locator("#reverse-slider input")
        slider.focus()
        for _ in range(5):
            slider.press("ArrowRight")
        after = frame.get_attribute("src")
        assert before != after and after.endswith("reverse_005.png")
        # the new frame loads asynchronously: wait (up to 30 s on a busy machine) until it has decoded
        tab.wait_for_function("(() => { const i = document.querySelector('#reverse-slider img');"
                              " return i.complete && i.naturalWidth > 0; })()", timeout=30_000)
        assert "step 6/" in tab.locator("#reverse-slider output").inner_text()
        for box in tab.locator("[data-frames]").all():            # every slider moves to its last frame
            frames = json.loads(box.get_attribute("data-frames"))
            box.locator("input").focus()
            box.locator("input").press("End")
            assert box.locator("img").get_attribute("src") == frames[-1]
        n_steps = len(json.loads(tab.locator("#steps-slider").get_attribute("data-frames")))
        assert tab.locator("#steps-slider output").inner_text().startswith(f"step {n_steps}/")
        # the table of contents by level: one entry per level with its sections; each link scrolls to its target
        levels = tab.evaluate("[...document.querySelectorAll('#toc li')].map(li => li.dataset.level)")
        assert levels == ["1", "2", "3", "4", "5"]
        for target in ("level-3", "per-pixel", "encoding", "prompt", "maths", "level-1"):
            tab.locator(f'#toc a[href="#{target}"]').click()
            tab.wait_for_function(f"location.hash === '#{target}'")
            top = tab.evaluate(f"document.getElementById('{target}').getBoundingClientRect().top")
            assert abs(top) < 5, (target, top)
        level_of = tab.evaluate("Object.fromEntries([...document.querySelectorAll('#toc li')].flatMap(li => [..."
                                "li.querySelectorAll('a')].slice(1).map(a => [a.hash.slice(1), +li.dataset.level])))")
        assert level_of == {sid: LEVEL_OF[sid] for sid in SECTIONS}
        # every sound player has loaded its WAV: metadata read, a duration of one clip (0.512 s)
        tab.wait_for_function("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)",
                              timeout=30_000)
        durations = tab.evaluate("[...document.querySelectorAll('#sound audio')].map(a => a.duration)")
        reverse_steps = json.loads((page.parent / "explain.json").read_text())["sound"]["reverse_steps"]
        assert len(durations) == 1 + 4 + min(6, reverse_steps) + 1  # clip, noised, reverse states, sample
        assert all(abs(d - 0.512) < 0.01 for d in durations)
        assert tab.evaluate("[...document.querySelectorAll('audio')].every(a => !a.error)")
        tab.screenshot(path=str(tmp_path / "page.png"), full_page=False)
        browser.close()
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.size == (1200, 900)


def test_user_image_is_loaded_for_the_page(tmp_path):
    from PIL import Image, ImageDraw

    from undiffuse.errors import UndiffuseError
    from undiffuse.explain.build import DISPLAY, load_display_image
    im = Image.new("RGB", (80, 60), "white")
    ImageDraw.Draw(im).ellipse((45, 10, 75, 40), fill=(200, 0, 0))   # a red disc, right of centre, on white
    im.save(tmp_path / "disc.png")
    rgb, gray = load_display_image(tmp_path / "disc.png", 3), load_display_image(tmp_path / "disc.png", 1)
    assert rgb.shape == (3, DISPLAY, DISPLAY) and gray.shape == (1, DISPLAY, DISPLAY)
    assert rgb.min() >= -1 and rgb.max() <= 1 and float(rgb[0].mean()) > float(rgb[1].mean())  # red stays red
    ink = (gray[0] - 1).abs() > 0.05                                 # the disc's pixels (background is white)
    assert 0.05 < float(ink.float().mean()) < 0.5
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(UndiffuseError, match="cannot use --image .*broken.png"):
        load_display_image(tmp_path / "broken.png", 1)
