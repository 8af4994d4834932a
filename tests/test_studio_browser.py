"""`undiffuse studio` in the real Debian Chromium: generate and watch x̂0 change, find the result in the history,
use its settings again, recall parameters by dropping a PNG, paint a mask and inpaint, cancel a long job seen from
a second tab, and follow a tiny run's loss curve and samples on the dashboard."""

import base64
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from undiffuse.cli import app  # noqa: E402
from undiffuse.images import read_params  # noqa: E402
from undiffuse.studio import runner  # noqa: E402
from undiffuse.studio.server import BackgroundStudio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60_000  # ms: generous, for a busy machine


@pytest.fixture(scope="module")
def studio(tmp_path_factory, one_thread):
    """A digits run of 6 steps that logs every step and writes sample grids, and the studio over it."""
    tmp = tmp_path_factory.mktemp("studio-browser")
    run = tmp / "runs" / "tiny"
    result = CliRunner().invoke(app, ["train", str(ROOT / "configs" / "digits-smoke.toml"), "--no-progress",
                                      "--set", f"out_dir='{run}'", "--set", "train.steps=6", "--set",
                                      "train.log_every=1", "--set", "train.sample_every=3",
                                      "--set", "sample.n=16"])
    assert result.exit_code == 0, result.output
    with BackgroundStudio(tmp / "runs", tmp / "out") as server:
        server.out = tmp / "out"
        yield server


def finished(tab, job_id: str) -> str:
    tab.wait_for_selector(f'#queue li[data-id="{job_id}"][data-state="done"], '
                          f'#queue li[data-id="{job_id}"][data-state="failed"]', timeout=TIMEOUT)
    return tab.get_attribute(f'#queue li[data-id="{job_id}"]', "data-state")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_studio_in_chromium(studio, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("UNDIFFUSE_STUDIO_SCREENSHOTS", tmp_path))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1360, "height": 860})
        errors = []
        tab.on("pageerror", lambda err: errors.append(str(err)))
        tab.goto(studio.url)
        tab.wait_for_selector('#model option[value="run:tiny"]', state="attached")
        tab.select_option("#model", "emoji-dit")                  # a text model: a prompt, no class
        assert tab.is_visible("#prompt-field") and not tab.is_visible("#class-field")
        assert tab.input_value("#guidance") == "4"
        tab.select_option("#model", "run:tiny")                   # a class-conditional one: the reverse
        assert not tab.is_visible("#prompt-field") and tab.is_visible("#class-field")
        assert tab.input_value("#steps") == "20" and tab.input_value("#sampler") == "dpmpp_2m"   # the card's
        tab.select_option("#class", "3")
        tab.fill("#steps", "200")
        tab.fill("#n", "4")
        tab.fill("#seed", "5")
        tab.click("#advanced summary")
        tab.fill("#preview_every", "1")
        # -------------------------------------------------------------- generate: the preview changes, then the result
        tab.evaluate("""() => {
            window.__seen = []; window.__done = false;
            const p = document.querySelector('#preview'), r = document.querySelector('#result');
            new MutationObserver(() => { if (!window.__done && p.src && window.__seen.at(-1) !== p.src)
                window.__seen.push(p.src); }).observe(p, {attributes: true, attributeFilter: ['src']});
            new MutationObserver(() => { if (r.src) window.__done = true; })
                .observe(r, {attributes: true, attributeFilter: ['src']});
        }""")
        tab.click("#submit")
        tab.wait_for_function("(() => { const r = document.querySelector('#result');"
                              " return !r.hidden && r.complete && r.naturalWidth > 0; })()", timeout=TIMEOUT)
        seen = tab.evaluate("window.__seen")
        assert len(seen) >= 3, seen                  # the preview changed at least twice before the result
        first = tab.get_attribute("#result", "data-job")
        assert "seed 5" in tab.inner_text("#status") and "done in" in tab.inner_text("#status")
        assert tab.locator("#result-images img").count() == 4
        if shots != tmp_path:
            tab.screenshot(path=str(shots / "studio-generate.png"))
        # ---------------------------------------------------------------- the history, and its settings used again
        tab.fill("#steps", "9")
        tab.click('nav a[data-view="history"]')
        tab.wait_for_selector(f'.card[data-id="{first}"] img.grid', timeout=TIMEOUT)
        tab.click(f'.card[data-id="{first}"] .reuse')
        tab.wait_for_selector("#view-generate:not([hidden])")
        tab.wait_for_function("document.querySelector('#steps').value === '200'")
        assert tab.input_value("#seed") == "5" and tab.input_value("#class") == "3"
        # ---------------------------------------------------------------- drop a PNG: its parameters come back
        tab.fill("#steps", "11")
        tab.fill("#seed", "random")
        tab.select_option("#class", "")
        one = sorted((studio.out / "history" / first).glob("0001_*.png"))[0]
        assert read_params(one)["seed"] == 6
        tab.evaluate("""async (b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            document.querySelector('#current').dispatchEvent(new DragEvent('drop',
                {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", base64.b64encode(one.read_bytes()).decode())
        tab.wait_for_function("document.querySelector('#recall-note').textContent.includes('recalled from')")
        assert tab.input_value("#steps") == "200" and tab.input_value("#seed") == "6"
        assert tab.input_value("#n") == "1" and tab.input_value("#class") == "3"
        # ---------------------------------------------------------------- paint a mask and inpaint
        tab.select_option("#task", "inpaint")
        tab.set_input_files("#image-file", str(one))
        tab.wait_for_selector("#image-zone.has-image #mask-canvas", state="visible")
        box = tab.locator("#mask-canvas").bounding_box()
        tab.mouse.move(box["x"] + 30, box["y"] + 20)
        tab.mouse.down()
        tab.mouse.move(box["x"] + 100, box["y"] + box["height"] - 20, steps=8)
        tab.mouse.up()
        tab.fill("#steps", "10")
        tab.fill("#n", "2")
        tab.click("#submit")
        tab.wait_for_function(f"(() => {{ const r = document.querySelector('#result');"
                              f" return r.dataset.job && r.dataset.job !== '{first}' && !r.hidden; }})()",
                              timeout=TIMEOUT)
        painted = tab.get_attribute("#result", "data-job")
        folder = studio.out / "history" / painted
        mask = np.asarray(Image.open(folder / "mask.png"))
        assert mask.max() == 255 and mask.min() == 0 and 0.05 < (mask > 127).mean() < 0.6   # the brush stroke
        assert read_params(sorted(folder.glob("0000_*.png"))[0])["task"] == "inpaint"
        # ---------------------------------------------------------------- a long job, seen by a second tab, cancelled
        # The second tab opens first: loading it on a busy machine could outlast the job, which would then end
        # "done" before the cancel reaches it.
        other = browser.new_page(viewport={"width": 1360, "height": 860})
        other.goto(studio.url)
        other.wait_for_function("document.querySelector('#queue-count').textContent !== ''", timeout=TIMEOUT)
        # The tiny model samples 500 steps in about a second, faster than the tabs can see it run on a busy machine:
        # each step of this job is paced to 0.2 s (≤ 100 s in all), and a cancel must stop it at the next one.
        paced_step = runner.Watch.step

        def slow_step(watch, x0_hat):
            time.sleep(0.2)
            paced_step(watch, x0_hat)

        monkeypatch.setattr(runner.Watch, "step", slow_step)
        tab.select_option("#task", "generate")
        tab.fill("#steps", "500")
        tab.fill("#n", "16")
        tab.fill("#preview_every", "")
        tab.click("#submit")
        tab.wait_for_function("(() => { const s = document.querySelector('#status').textContent;"
                              " return s.includes('sampling') && s.includes('%'); })()", timeout=TIMEOUT)
        long_job = tab.evaluate("S.follow")
        other.wait_for_selector(f'#queue li[data-id="{long_job}"][data-state="running"]', timeout=TIMEOUT)
        tab.click("#cancel")
        for t in (tab, other):
            t.wait_for_selector(f'#queue li[data-id="{long_job}"][data-state="cancelled"]', timeout=TIMEOUT)
        assert "cancelled" in tab.inner_text("#status")
        monkeypatch.setattr(runner.Watch, "step", paced_step)
        other.close()
        # ---------------------------------------------------------------- the training dashboard of the tiny run
        tab.goto(studio.url + "/#dashboard/tiny")
        tab.wait_for_selector('#chart-loss[data-points="6"]', timeout=TIMEOUT)
        ink = tab.evaluate("""() => { const c = document.querySelector('#chart-loss');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200 && d[i + 2] > 150 && d[i] < 120) n++;
            return n; }""")
        assert ink > 50                                   # the loss curve is drawn (in its blue)
        tab.wait_for_function("[...document.querySelectorAll('#run-samples img')].some(i => i.naturalWidth > 0)",
                              timeout=TIMEOUT)
        assert "--resume" in tab.inner_text("#resume") and "digits-smoke.toml" in tab.inner_text("#resume")
        assert "step 6 of 6" in tab.inner_text("#run-progress")
        if shots != tmp_path:
            tab.screenshot(path=str(shots / "studio-dashboard.png"))
        assert errors == []
        browser.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_studio_plays_sound_and_shows_video(tmp_path, tone_run, video_run, one_thread):
    """A sound run's result plays in the page (every player loads its WAV), a video run's clips play as GIFs."""
    sync_api = pytest.importorskip("playwright.sync_api")
    runs = tmp_path / "runs"
    shutil.copytree(tone_run, runs / "tones")
    shutil.copytree(video_run, runs / "sprites")
    with BackgroundStudio(runs, tmp_path / "out") as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1360, "height": 860})
        errors = []
        tab.on("pageerror", lambda err: errors.append(str(err)))
        tab.goto(server.url)
        for run, n in (("tones", 2), ("sprites", 2)):
            tab.wait_for_selector(f'#model option[value="run:{run}"]', state="attached")
            tab.select_option("#model", f"run:{run}")
            tab.fill("#steps", "3")
            tab.fill("#n", str(n))
            before = tab.get_attribute("#result", "data-job")
            tab.click("#submit")
            tab.wait_for_function(f"(() => {{ const r = document.querySelector('#result');"
                                  f" return r.dataset.job && r.dataset.job !== '{before}' && !r.hidden; }})()",
                                  timeout=TIMEOUT)
            if run == "tones":   # a player per clip and one of all of them in a row, each with its WAV loaded
                tab.wait_for_function("(() => { const a = [...document.querySelectorAll('#result-images audio')];"
                                      f" return a.length === {n + 1} && a.every(x => x.readyState >= 1); }})()",
                                      timeout=TIMEOUT)
                durations = tab.evaluate("[...document.querySelectorAll('#result-images audio')].map(a => a.duration)")
                assert all(d > 0.1 for d in durations) and max(durations) > min(durations)   # all.wav is longer
                assert tab.evaluate("[...document.querySelectorAll('#result-images audio')].every(a => !a.error)")
            else:                # each clip a looping GIF that links its MP4
                gifs = "[...document.querySelectorAll('#result-images figure.clip img')]"
                tab.wait_for_function(f"(() => {{ const g = {gifs}; return g.length === {n}"
                                      " && g.every(i => i.complete && i.naturalWidth > 0); })()", timeout=TIMEOUT)
                links = tab.evaluate("[...document.querySelectorAll('#result-images figure.clip a')].map(a => a.href)")
                assert all(link.endswith(".mp4") for link in links)
                status = tab.evaluate("(async (u) => (await fetch(u)).status)", links[0])
                assert status == 200
        tab.click('nav a[data-view="history"]')   # the sound entry in the history has its player too
        tab.wait_for_function("[...document.querySelectorAll('.card audio.all-sounds')].some(a => a.readyState >= 1)",
                              timeout=TIMEOUT)
        assert errors == []
        browser.close()
