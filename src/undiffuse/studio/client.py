"""A small client of the studio's HTTP API (standard library only), for scripts and tests:

    from undiffuse.studio.client import StudioClient
    studio = StudioClient("http://127.0.0.1:7860")
    job = studio.wait(studio.submit(model="fashion-mnist", **{"class": "Sneaker"}, n=4)["id"])
    print(job["result"]["urls"]["grid"])
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

FINAL = ("done", "failed", "cancelled")


class StudioError(Exception):
    """A refusal from the studio: its HTTP status and one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class StudioClient:
    """GET/POST/DELETE JSON against a running studio."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer; a 4xx/5xx raises :class:`StudioError`."""
        data = None if method == "GET" else json.dumps(body if body is not None else {}).encode()
        headers = {} if method == "GET" else {"Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                return json.loads(res.read())
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                message = json.loads(text).get("error", "")
            except ValueError:
                message = text.decode(errors="replace")[:200]
            raise StudioError(err.code, message) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def submit(self, **fields: Any) -> dict[str, Any]:
        """POST /api/jobs: the queued job."""
        return self.request("POST", "/api/jobs", fields)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/jobs/{job_id}/cancel")

    def wait(self, job_id: str, timeout: float = 120.0, poll: float = 0.05) -> dict[str, Any]:
        """The job once it is done, failed or cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/api/jobs/{job_id}")
            if job["state"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(poll)

    def file(self, url: str) -> bytes:
        """The bytes of a file URL the API gave (an image in the history, a run's sample grid)."""
        with urllib.request.urlopen(self.url + url, timeout=self.timeout) as res:
            return res.read()
