"""`undiffuse studio`'s HTTP API against a real server on a free loopback port, with a 4-step digits model:
every endpoint, its refusals, path traversal, the caps, and a queue that outlives a failing job."""

import base64
import http.client
import io
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from undiffuse import samplers  # noqa: E402
from undiffuse.errors import UndiffuseError  # noqa: E402
from undiffuse.images import read_params  # noqa: E402
from undiffuse.model_files import shipped_models  # noqa: E402
from undiffuse.studio import limits  # noqa: E402
from undiffuse.studio.client import StudioClient, StudioError  # noqa: E402
from undiffuse.studio.server import BackgroundStudio, bind, host_warning  # noqa: E402
from undiffuse.tasks.run import DENOISE_SAMPLER, DENOISE_STEPS  # noqa: E402

MODEL = "run:run"   # the digits_run fixture's folder is …/run


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def studio(digits_run, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("studio-out")
    with BackgroundStudio(digits_run.parent, out) as server:
        server.out = out
        server.client = StudioClient(server.url)
        yield server


def raw(studio, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request with the path sent exactly as written (no client-side normalisation)."""
    host, port = urlsplit(studio.url).hostname, urlsplit(studio.url).port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, data


def refused(studio, body, status=400) -> str:
    with pytest.raises(StudioError) as err:
        studio.client.submit(**body)
    assert err.value.status == status, err.value
    return err.value.message


def test_info_models_and_samplers(studio, digits_run):
    c = studio.client
    info = c.get("/api/info")
    assert info["limits"]["max_n"] == limits.MAX_N and info["limits"]["max_steps"] == limits.MAX_STEPS
    assert "karras" in info["grids"] and info["tasks"] == ["generate", "inpaint", "upscale", "edit", "denoise"]
    models = {m["id"]: m for m in c.get("/api/models")["models"]}
    assert set(shipped_models()) <= set(models) and MODEL in models      # every shipped model and the run
    run = models[MODEL]
    assert run["classes"] == [str(i) for i in range(10)] and not run["text"]
    assert run["defaults"] == {"sampler": "dpmpp_2m", "steps": 20, "grid": "karras", "guidance": 2.0,  # its card
                               "eps_scale": 1.0, "guidance_parallel": 1.0}
    assert run["task_defaults"] == {"denoise": {"sampler": DENOISE_SAMPLER, "steps": DENOISE_STEPS}}
    assert "denoise" in run["tasks"] and models["emoji-dit"]["space"] == "latent"
    assert "denoise" not in models["emoji-dit"]["tasks"] and models["emoji-dit"]["text"]
    assert [s["name"] for s in c.get("/api/samplers")["samplers"]] == samplers.names()


def test_generate_preview_history_and_use_again(studio):
    c = studio.client
    job = c.submit(model=MODEL, steps=6, n=3, seed="random", preview_every=1, **{"class": "7"})
    assert job["state"] in ("queued", "running") and job["settings"]["random_seed"]
    seed = job["settings"]["seed"]
    assert isinstance(seed, int) and job["settings"]["sampler"] == "dpmpp_2m"   # the card's default filled in
    done = c.wait(job["id"])
    assert done["state"] == "done" and done["progress"] == 1 and done["preview_version"] >= 6  # one per step
    urls = done["result"]["urls"]
    assert len(urls["images"]) == 3 and urls["grid"].endswith("grid.png")
    first = Image.open(io.BytesIO(c.file(urls["images"][0])))
    params = json.loads(first.text["undiffuse"])       # the PNG carries its parameters, as `undiffuse sample` writes
    assert params["seed"] == seed and params["class"] == "7" and params["steps"] == 6
    assert "Sampler: DPM++ 2M" in first.text["parameters"]      # and A1111's text chunk, with its sampler name
    # the history lists it; its settings run again give the same pixels (per-sample seeds)
    items = c.get("/api/history")["items"]
    assert items[0]["id"] == job["id"] and c.get(f"/api/history/{job['id']}")["settings"]["seed"] == seed
    again = c.wait(c.submit(**{k: v for k, v in done["settings"].items() if k != "random_seed"})["id"])
    assert again["state"] == "done" and again["settings"]["seed"] == seed
    a = Path(studio.out, "history", job["id"], Path(urls["images"][2]).name)
    b = Path(studio.out, "history", again["id"], Path(again["result"]["urls"]["images"][2]).name)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # recall from the PNG: one image → n = 1 with its own seed; the grid → its seed range
    one = c.request("POST", "/api/recall", {"image": data_url(a.read_bytes())})
    assert one["settings"]["model"] == MODEL and one["settings"]["seed"] == seed + 2 and one["settings"]["n"] == 1
    grid = c.request("POST", "/api/recall", {"image": data_url(c.file(urls["grid"]))})
    assert grid["settings"]["seed"] == seed and grid["settings"]["n"] == 3 and grid["settings"]["class"] == "7"
    assert read_params(a)["model"] == one["params"]["model"]


def test_web_ui_sampler_names_are_taken(studio):
    """The studio resolves names through the sampler registry: "Euler a Karras" is euler_ancestral, karras grid."""
    c = studio.client
    job = c.submit(model=MODEL, steps=2, n=1, seed=1, sampler="Euler a Karras", grid="", **{"class": "3"})
    assert (job["settings"]["sampler"], job["settings"]["grid"]) == ("euler_ancestral", "karras")
    assert c.wait(job["id"])["state"] == "done"
    assert refused(studio, {"model": MODEL, "sampler": "DPM++ SDE"}).startswith("unknown sampler 'DPM++ SDE'")


def test_text_model_takes_a_prompt(studio):
    c = studio.client
    job = c.wait(c.submit(model="emoji-dit", prompt="a red heart", steps=2, n=1, seed=3)["id"])
    assert job["state"] == "done", job["error"]
    data = c.file(job["result"]["urls"]["images"][0])
    assert json.loads(Image.open(io.BytesIO(data)).text["undiffuse"])["prompt"] == "a red heart"
    recalled = c.request("POST", "/api/recall", {"image": data_url(data)})["settings"]
    assert recalled["model"] == "emoji-dit" and recalled["prompt"] == "a red heart" and recalled["seed"] == 3


def test_image_tasks(studio):
    c = studio.client
    src = Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy(), "L")
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))                         # fill the left half
    jobs = {"inpaint": {"mask": data_url(png(mask))}, "upscale": {"factor": 2}, "edit": {"strength": 0.5},
            "denoise": {}}
    for task, extra in jobs.items():
        job = c.wait(c.submit(model=MODEL, task=task, image=data_url(png(src)), steps=4, seed=1, **extra)["id"])
        assert job["state"] == "done", (task, job["error"])
        assert job["preview_version"] > 0, task
        out = Image.open(io.BytesIO(c.file(job["result"]["urls"]["images"][0])))
        assert json.loads(out.text["undiffuse"])["task"] == task
        if task == "inpaint":   # the kept half is the input, exactly
            assert np.array_equal(np.asarray(out)[:, 4:], np.asarray(src)[:, 4:])
            assert set(job["result"]["urls"]["inputs"]) == {"input", "mask"}
    all_black = Image.new("L", (8, 8), 0)                 # a mask with nothing to fill fails the job, not the queue
    bad = c.wait(c.submit(model=MODEL, task="inpaint", image=data_url(png(src)), mask=data_url(png(all_black)),
                          steps=2)["id"])
    assert bad["state"] == "failed" and "white (fill) and black (keep)" in bad["error"]
    assert not Path(studio.out, "history", bad["id"]).exists()      # a failed job leaves nothing behind
    assert c.wait(c.submit(model=MODEL, steps=2, n=1)["id"])["state"] == "done"


def test_denoise_samples_as_the_cli_does(studio):
    """denoise's sampler and steps left out are the task's own (the CLI's), not the card's SDE sampler; given, kept."""
    import inspect

    from undiffuse import cli
    defaults = inspect.signature(cli.denoise).parameters
    assert (defaults["sampler"].default, defaults["steps"].default) == (DENOISE_SAMPLER, DENOISE_STEPS)
    c = studio.client
    src = data_url(png(Image.fromarray((torch.rand(32, 32) * 255).to(torch.uint8).numpy(), "L")))
    job = c.submit(model="fashion-mnist", task="denoise", image=src, sigma=0.1)
    assert (job["settings"]["sampler"], job["settings"]["steps"]) == (DENOISE_SAMPLER, DENOISE_STEPS)
    card = {m["id"]: m for m in c.get("/api/models")["models"]}["fashion-mnist"]["defaults"]
    assert (card["sampler"], card["steps"]) != (DENOISE_SAMPLER, DENOISE_STEPS)   # so the task's own took effect
    assert c.wait(job["id"])["state"] == "done"
    chosen = c.submit(model="fashion-mnist", task="denoise", image=src, sampler="euler", steps=3)
    assert (chosen["settings"]["sampler"], chosen["settings"]["steps"]) == ("euler", 3)
    assert c.wait(chosen["id"])["state"] == "done"


BAD = [
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"model": "../../etc/passwd"}, "unknown model"),
    ({"model": "/etc"}, "unknown model"),
    ({}, "choose a model"),
    ({"model": MODEL, "steps": limits.MAX_STEPS + 1}, f"steps must be 1 to {limits.MAX_STEPS}"),
    ({"model": MODEL, "steps": 0}, "steps must be 1 to"),
    ({"model": MODEL, "n": limits.MAX_N + 1}, f"n must be 1 to {limits.MAX_N}"),
    ({"model": MODEL, "n": 2.5}, "n must be a whole number"),
    ({"model": MODEL, "steps": "many"}, "steps must be a number"),
    ({"model": MODEL, "seed": "abc"}, "seed must be a number"),
    ({"model": MODEL, "guidance": float("nan")}, "guidance must be"),
    ({"model": MODEL, "sampler": "nope"}, "unknown sampler 'nope'"),
    ({"model": MODEL, "grid": "nope"}, "unknown grid 'nope'"),
    ({"model": MODEL, "class": "eleven"}, "unknown class 'eleven'"),
    ({"model": MODEL, "prompt": "a cat"}, "not text-conditioned"),
    ({"model": MODEL, "task": "paint"}, "unknown task 'paint'"),
    ({"model": MODEL, "task": "inpaint"}, "inpaint needs an image"),
    ({"model": MODEL, "task": "edit", "image": "not base64!"}, "the image is not valid base64"),
    ({"model": MODEL, "task": "edit", "image": data_url(b"GIF89a nonsense")}, "not a readable image"),
    ({"model": MODEL, "task": "edit", "image": data_url(png(Image.new("L", (limits.MAX_UPLOAD_SIDE + 1, 2))))},
     f"at most {limits.MAX_UPLOAD_SIDE} on a side"),
    ({"model": MODEL, "strength": 0.5}, "strength is not an option of generate"),
    ({"model": MODEL, "wat": 1}, "unknown field 'wat'"),
    ({"model": MODEL, "guidance_interval": "1"}, "LO,HI"),
    ({"model": MODEL, "guidance_rescale": 2}, "guidance_rescale must be 0 to 1"),
    ({"model": MODEL, "guidance_parallel": -1}, "guidance_parallel must be 0 to 1"),
    ({"model": MODEL, "precision": "fp8"}, "unknown precision 'fp8'"),
    ({"model": MODEL, "autoguide": "../x"}, "unknown autoguide model"),
    ({"model": "emoji-dit", "task": "denoise"}, "cannot denoise"),
    ({"model": "emoji-dit", "prompt": "x" * (limits.MAX_PROMPT + 1)}, f"at most {limits.MAX_PROMPT}"),
]


@pytest.mark.parametrize("body,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_one_clear_message(studio, body, message, capfd):
    assert message in refused(studio, body)
    assert "Traceback" not in capfd.readouterr().err


def test_malformed_requests(studio, capfd):
    status, data = raw(studio, "POST", "/api/jobs", b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(data)["error"]
    status, data = raw(studio, "POST", "/api/jobs", b"{}", {"Content-Type": "text/plain"})  # a form post elsewhere
    assert status == 415 and "application/json" in json.loads(data)["error"]
    status, _ = raw(studio, "POST", "/api/jobs", b"{}", {"Content-Type": "application/json",
                                                         "Content-Length": str(limits.MAX_BODY_BYTES + 1)})
    assert status == 413
    status, _ = raw(studio, "GET", "/api/jobs", headers={"Host": "evil.example"})   # DNS rebinding
    assert status == 400
    for path in ("/api/jobs/nope", "/api/jobs/nope/preview.png", "/api/history/nope", "/api/nothing",
                 "/api/runs/nope"):
        status, data = raw(studio, "GET", path)
        assert status == 404 and json.loads(data)["error"], path
    status, data = raw(studio, "DELETE", "/api/jobs", b"{}", {"Content-Type": "application/json"})
    assert status == 405
    with pytest.raises(StudioError, match="carries no undiffuse parameters"):
        studio.client.request("POST", "/api/recall", {"image": data_url(png(Image.new("RGB", (4, 4))))})
    with pytest.raises(StudioError, match="offset must be"):
        studio.client.get("/api/history?offset=-1")
    assert "Traceback" not in capfd.readouterr().err


TRAVERSAL = ["/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2f..%2fcli.py",
             "/static//etc/passwd", "/files/history/../../../etc/passwd", "/files/history/%2e%2e/%2e%2e/etc/passwd",
             "/files/history/..%2f..%2f/passwd", "/files/runs/run/samples/..%2fconfig.json",
             "/files/runs/../../../etc/samples/passwd", "/files/runs/run/samples/../../config.json",
             "/api/runs/../../etc", "/api/runs/%2e%2e", "/api/history/..%2f..%2fetc"]


def test_path_traversal_is_refused(studio, digits_run):
    job = studio.client.wait(studio.client.submit(model=MODEL, steps=2, n=1)["id"])
    secret = digits_run / "config.json"
    mine = f"/files/history/{job['id']}"
    paths = [*TRAVERSAL, f"{mine}/..%2f..%2f..%2f{secret}", f"{mine}/record.json", f"{mine}/%2e%2e"]
    for path in paths:
        status, data = raw(studio, "GET", path)
        assert status in (400, 404), (path, status)
        assert b'"diffusion"' not in data and b"[project]" not in data and b"root:" not in data, path
    # a link planted in the history that leads outside is not followed
    link = Path(studio.out, "history", job["id"], "0009_leak.png")
    link.symlink_to(secret)
    assert raw(studio, "GET", f"/files/history/{job['id']}/0009_leak.png")[0] == 404
    link.unlink()
    assert raw(studio, "GET", "/static/studio.js")[0] == 200 and raw(studio, "GET", "/")[0] == 200


def test_queue_full_cancel_and_a_failing_job(studio, monkeypatch):
    c = studio.client
    blocker = c.submit(model=MODEL, steps=limits.MAX_STEPS, n=limits.MAX_N, seed=0)
    waiting = [c.submit(model=MODEL, steps=2, n=1) for _ in range(limits.MAX_QUEUED)]
    with pytest.raises(StudioError) as err:
        c.submit(model=MODEL, steps=2, n=1)
    assert err.value.status == 429 and "queue is full" in err.value.message
    for job in waiting:                                   # cancelled at once while queued
        assert c.cancel(job["id"])["state"] == "cancelled"
    while (j := c.get(f"/api/jobs/{blocker['id']}"))["preview_version"] == 0:
        assert j["state"] in ("queued", "running")
    status, data = raw(studio, "GET", f"/api/jobs/{blocker['id']}/preview.png")
    assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.cancel(blocker["id"])["cancel_requested"]
    gone = c.wait(blocker["id"], timeout=30)
    assert gone["state"] == "cancelled" and gone["progress"] < 1
    assert not Path(studio.out, "history", blocker["id"]).exists()
    # a bug inside a job fails that job with one line; the server and the queue go on
    import undiffuse.studio.runner as runner

    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(runner, "generate", broken)
    failed = c.wait(c.submit(model=MODEL, steps=2)["id"])
    assert failed["state"] == "failed" and failed["error"] == "internal error: RuntimeError: boom"
    monkeypatch.undo()
    assert c.wait(c.submit(model=MODEL, steps=2, n=1)["id"])["state"] == "done"


def test_event_stream_sends_the_queue(studio):
    host, port = urlsplit(studio.url).hostname, urlsplit(studio.url).port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/api/events")
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("content-type").startswith("text/event-stream")
    assert res.readline() == b"event: jobs\n"
    data = json.loads(res.readline().removeprefix(b"data: "))
    assert isinstance(data["jobs"], list) and data["version"] > 0
    conn.close()


def test_dashboard(studio, digits_run):
    c = studio.client
    runs = c.get("/api/runs")["runs"]
    assert [r["id"] for r in runs] == ["run"] and runs[0]["step"] == 4 and runs[0]["state"] == "finished"
    run = c.get("/api/runs/run")
    assert run["config"]["name"] == "digits-smoke" and run["curves"]["step"] == [4]
    assert run["curves"]["loss"][0] > 0 and run["curves"]["lr"][0] > 0 and run["curves"]["img_per_s"][0] > 0
    cmd = run["resume_command"]
    assert cmd.startswith("undiffuse train ") and "digits-smoke.toml" in cmd and cmd.endswith("--resume")
    assert f"out_dir=\"{digits_run}\"" in cmd and "train.steps=4" in cmd


def test_history_survives_a_restart_and_delete(studio, digits_run):
    before = studio.client.get("/api/history?limit=200")
    assert before["total"] >= 3
    files = sorted(p.name for p in digits_run.rglob("*"))
    with BackgroundStudio(digits_run.parent, studio.out) as again:
        c = StudioClient(again.url)
        after = c.get("/api/history?limit=200")
        assert after["total"] == before["total"] and after["items"] == before["items"]
        victim = after["items"][-1]["id"]
        c.request("DELETE", f"/api/history/{victim}")
        assert c.get("/api/history?limit=200")["total"] == before["total"] - 1
        assert not Path(studio.out, "history", victim).exists()
        with pytest.raises(StudioError) as err:
            c.get(f"/api/history/{victim}")
        assert err.value.status == 404
    assert sorted(p.name for p in digits_run.rglob("*")) == files      # the studio never writes into a run
    assert {p.name for p in Path(studio.out).iterdir()} == {"history"}


def test_binds_loopback_unless_told():
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None and host_warning("::1") is None
    for host in ("0.0.0.0", "192.168.1.20", "example.org"):
        assert "not on 127.0.0.1" in host_warning(host)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(UndiffuseError, match="cannot listen on 127.0.0.1"):
            bind("127.0.0.1", busy.getsockname()[1])


def test_cli_has_the_command():
    from typer.testing import CliRunner

    from undiffuse.cli import app
    result = CliRunner().invoke(app, ["studio", "--help"], env={**os.environ, "COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--host", "--port", "--runs", "--out"):
        assert option in result.output


def test_a_sound_model_gives_clips_to_play(tone_run, tmp_path):
    """A sound model's job writes WAVs with their parameters, all.wav and the spectrogram grid; the history serves
    them as audio; its only task is generate."""
    from undiffuse.data.audio import read_wav_params

    with BackgroundStudio(tone_run.parent, tmp_path) as server:
        c = StudioClient(server.url)
        entry = {m["id"]: m for m in c.get("/api/models")["models"]}[MODEL]
        assert entry["sound"] and entry["space"] == "spectrogram" and entry["tasks"] == ["generate"]
        done = c.wait(c.submit(model=MODEL, steps=3, n=2, seed=4, **{"class": "low"})["id"])
        assert done["state"] == "done", done
        urls = done["result"]["urls"]
        assert len(urls["sounds"]) == 2 and urls["all_sounds"].endswith("all.wav")
        assert urls["grid"].endswith("spectrograms.png") and urls["images"] == []
        status, data = raw(server, "GET", urls["sounds"][1])
        assert status == 200 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"
        clip = tmp_path / "clip.wav"
        clip.write_bytes(data)
        assert read_wav_params(clip)["seed"] == 5 and read_wav_params(clip)["class"] == "low"
        with pytest.raises(StudioError, match="cannot denoise"):
            c.submit(model=MODEL, task="denoise", image=data_url(png(Image.new("L", (32, 32)))))
