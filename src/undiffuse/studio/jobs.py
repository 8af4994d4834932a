"""The queue: jobs run one at a time on one worker thread, each with its state; every change bumps a version
number that the event stream (and any poller) watches, so every tab sees the same queue."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UndiffuseError
from .limits import KEEP_FINISHED, MAX_QUEUED, ApiError
from .spec import JobSpec

log = logging.getLogger("undiffuse.studio")
STATES = ("queued", "running", "done", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside a running job (from the sampler's callback) when it is cancelled."""


@dataclass
class Job:
    """One queued piece of work and what the page shows of it."""

    id: str
    spec: JobSpec
    state: str = "queued"
    phase: str = "waiting"                 # waiting, loading model, sampling, writing, …
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0                  # 0 … 1
    eta: float | None = None               # seconds left, from the pace so far
    error: str | None = None
    cancel_requested: bool = False
    preview: bytes | None = field(default=None, repr=False)   # the latest x̂0 as PNG
    preview_version: int = 0
    preview_step: int | None = None
    result: dict[str, Any] | None = None   # the history record, when done

    def check(self) -> None:
        """Stop here if the job was cancelled."""
        if self.cancel_requested:
            raise Cancelled()

    def to_dict(self) -> dict[str, Any]:
        s = self.spec.settings
        summary = s.get("prompt") or (f"class {s['class']}" if s.get("class") else "")
        return {"id": self.id, "state": self.state, "phase": self.phase, "task": self.spec.task,
                "model": self.spec.model.id, "summary": summary, "settings": s, "created": self.created,
                "started": self.started, "finished": self.finished, "progress": round(self.progress, 4),
                "eta": None if self.eta is None else round(self.eta, 1), "error": self.error,
                "cancel_requested": self.cancel_requested, "preview_version": self.preview_version,
                "preview_step": self.preview_step, "result": self.result}


class JobQueue:
    """Submitted jobs, run in order by one worker thread with ``run(job)`` (which returns the history record)."""

    def __init__(self, run: Callable[[Job], dict[str, Any]], discard: Callable[[Job], None] = lambda job: None,
                 max_queued: int = MAX_QUEUED):
        self._run, self._discard, self.max_queued = run, discard, max_queued
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.version = 0

    # --------------------------------------------------------------- the page's side
    def submit(self, job: Job) -> Job:
        """Queue ``job``; a full queue is refused (429) and nothing of the job is kept."""
        with self._lock:
            if self._stopping:
                raise ApiError("the studio is shutting down", 503)
            if len(self._waiting) >= self.max_queued:
                raise ApiError(f"the queue is full ({self.max_queued} jobs waiting); submit again when some "
                               "have finished", 429)
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            self._bump()
            self._wake.notify()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(f"no job {job_id[:40]!r} (finished jobs are in the history)", 404)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, a running one at its next step; a finished one is left as it is."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                self._waiting.remove(job.id)
                self._finish(job, "cancelled")
            elif job.state == "running":
                job.cancel_requested = True
                job.phase = "cancelling"
                self._bump()
        if job.state == "cancelled":
            self._discard(job)
        return job

    def snapshot(self, finished: int = KEEP_FINISHED) -> list[dict[str, Any]]:
        """The jobs waiting and running, and the last ``finished`` finished ones, oldest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        done = [j for j in jobs if j.state in ("done", "failed", "cancelled")]
        keep = {j.id for j in done[max(0, len(done) - finished):]}
        return [j.to_dict() for j in jobs if j.state in ("queued", "running") or j.id in keep]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(job.state for job in self._jobs.values()))

    def changed(self) -> None:
        """Called by a running job after it updates its progress or preview."""
        with self._lock:
            self._bump()

    # --------------------------------------------------------------- the worker
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="studio-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, and wait for the worker to end."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel_requested = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> Job | None:
        with self._lock:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            job = self._jobs[self._waiting.popleft()]
            job.state, job.started, job.phase = "running", time.time(), "starting"
            self._bump()
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                result = self._run(job)
            except Cancelled:
                state, error, result = "cancelled", None, None
            except (UndiffuseError, ApiError) as err:
                state, error, result = "failed", str(err), None
            except MemoryError:
                state, error, result = "failed", "out of memory: try fewer images or steps", None
            except Exception as err:  # a bug must not stop the queue; its one line is logged
                state, error, result = "failed", f"internal error: {type(err).__name__}: {err}", None
                log.error("job %s failed: %s: %s", job.id, type(err).__name__, err,
                          exc_info=bool(os.environ.get("UNDIFFUSE_STUDIO_DEBUG")))
            else:
                state, error = "done", None
            if state != "done":
                try:
                    self._discard(job)
                except OSError as err:
                    log.error("job %s: could not remove its folder: %s", job.id, err)
            with self._lock:
                job.error, job.result = error, result
                self._finish(job, state)

    def _finish(self, job: Job, state: str) -> None:
        """(Lock held.) Set a final state, drop the preview, forget the oldest finished jobs."""
        job.state, job.finished, job.preview, job.eta = state, time.time(), None, None
        job.phase = state
        if state == "done":
            job.progress = 1.0
        finished = [j for j in self._jobs.values() if j.state in ("done", "failed", "cancelled")]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[old.id]
        self._bump()

    def _bump(self) -> None:
        self.version += 1
