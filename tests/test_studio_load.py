"""Load on `undiffuse studio` started by its command: two waves of 20 jobs from 4 concurrent clients (with an event
stream open) against a 4-step digits model. Every job completes or is cleanly refused, every completed job is in
the history with readable PNGs, and the server's memory stays flat from one wave to the next."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from undiffuse.studio.client import StudioClient, StudioError  # noqa: E402

CLIENTS, JOBS_EACH = 4, 5
RSS_GROWTH_MB = 60        # allowed from the end of wave 1 to the end of wave 2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("studio-load")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "undiffuse", "studio", "--port", str(port), "--runs",
                             str(digits_run.parent), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    client = StudioClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.get("/api/info")
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the studio did not start"
            time.sleep(0.1)
    yield proc, client, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wave(client: StudioClient, offset: int) -> tuple[list[dict], list[StudioError]]:
    """4 clients submit 5 jobs each as fast as they can, then wait for theirs."""
    def one_client(k: int):
        mine, refused = [], []
        for i in range(JOBS_EACH):
            try:
                mine.append(client.submit(model="run:run", steps=3, n=2, seed=offset + k * 100 + i))
            except StudioError as err:
                refused.append(err)
        return [client.wait(j["id"], timeout=120) for j in mine], refused

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one_client, range(CLIENTS)))
    return [j for done, _ in results for j in done], [e for _, r in results for e in r]


def test_concurrent_clients(server):
    proc, client, out = server
    port = int(client.url.rsplit(":", 1)[1])
    events = []

    def listen():  # a tab with the event stream open the whole time
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/api/events")
        res = conn.getresponse()
        while len(events) < 40:
            line = res.readline()
            if not line:
                break
            if line.startswith(b"event: jobs"):
                events.append(line)
        conn.close()
    threading.Thread(target=listen, daemon=True).start()

    client.wait(client.submit(model="run:run", steps=2, n=1)["id"])     # warm: the model loaded once
    totals = []
    for w in range(2):
        done, refused = wave(client, 10_000 * (w + 1))
        assert len(done) + len(refused) == CLIENTS * JOBS_EACH
        assert all(j["state"] == "done" for j in done), [j["error"] for j in done if j["state"] != "done"]
        assert all(e.status == 429 and "queue is full" in e.message for e in refused)
        totals.append(rss_mb(proc.pid))
        history = client.get("/api/history?limit=200")
        ids = {item["id"] for item in history["items"]}
        assert {j["id"] for j in done} <= ids                      # nothing lost from the history
        for j in done:
            for name in j["result"]["images"] + ["grid.png"]:
                assert (out / "history" / j["id"] / name).stat().st_size > 0
    assert history["total"] == len(list((out / "history").iterdir()))
    assert totals[1] - totals[0] < RSS_GROWTH_MB, totals
    assert len(events) >= 3                                     # the stream followed the queue
    assert len(client.get("/api/jobs")["jobs"]) <= 100          # finished jobs are not all kept in memory

    proc.send_signal(signal.SIGINT)                             # Ctrl-C: a clean stop
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "undiffuse studio: http://127.0.0.1:" in stdout
