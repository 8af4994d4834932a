"""The HTTP side: a Starlette app with the page, its JSON API, an event stream of the queue, and the files of
the history and of the runs. Every refusal is JSON ``{"error": "one line"}`` with a 4xx status; nothing a client
sends produces a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__, samplers
from ..errors import UndiffuseError
from ..images import read_params
from ..nets.cpu import PRECISIONS
from . import limits
from .catalogue import Catalogue
from .dashboard import Dashboard
from .history import History
from .jobs import Job, JobQueue
from .limits import MAX_BODY_BYTES, MAX_EVENT_CLIENTS, ApiError
from .runner import run_job
from .spec import GRIDS, TASKS, parse_job
from .uploads import decode_bytes, open_image

log = logging.getLogger("undiffuse.studio")
MEDIA_TYPES = {".png": "image/png", ".wav": "audio/wav", ".gif": "image/gif", ".mp4": "video/mp4"}
STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
EVENT_POLL = 0.2       # seconds between looks at the queue's version, per open event stream
EVENT_KEEPALIVE = 15.0
EVENT_FINISHED = 30    # finished jobs in each event (GET /api/jobs has all that the queue keeps)
NO_CACHE = {"Cache-Control": "no-cache"}


def recipe_dirs() -> list[Path]:
    """Where the dashboard looks for a run's recipe: ./configs and the repository's configs/."""
    found: list[Path] = []
    for d in (Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"):
        if d.is_dir() and d.resolve() not in found:
            found.append(d.resolve())
    return found


def api(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint whose refusals are JSON with their status, and whose bugs are one logged line and a 500."""
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except UndiffuseError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except Exception as err:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(err).__name__, err,
                      exc_info=bool(os.environ.get("UNDIFFUSE_STUDIO_DEBUG")))
            return JSONResponse({"error": f"internal error ({type(err).__name__}); the server goes on"},
                                status_code=500)
    return endpoint


async def read_json(request: Request) -> Any:
    """The body as JSON, at most :data:`~.limits.MAX_BODY_BYTES`. POST and DELETE must say they send JSON:
    a page on another site cannot send that without the browser asking first, which the studio never allows."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError("send the request as JSON (Content-Type: application/json)", 415)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise ApiError(f"the request is larger than {MAX_BODY_BYTES >> 20} MB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(f"the request is larger than {MAX_BODY_BYTES >> 20} MB", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("the request body is not valid JSON") from None


def _int_param(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(key)
    if text is None:
        return default
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ApiError(f"{key} must be a whole number from {lo} to {hi}")
    return int(text)


class Studio:
    """The state behind the routes: models, queue, history, dashboard."""

    def __init__(self, runs: Path | None, out: Path):
        self.runs, self.out = runs, Path(out)
        self.catalogue = Catalogue(runs)
        self.history = History(self.out)
        self.dashboard = Dashboard(runs, recipe_dirs())
        self.queue = JobQueue(lambda job: run_job(job, self.catalogue, self.history, self.queue.changed),
                              discard=lambda job: self.history.discard(job.id))
        self.event_clients = 0
        self.stopping = False  # set when the server is asked to stop: event streams end so it can

    # ------------------------------------------------------------------ models, samplers, info
    async def info(self, request: Request) -> Response:
        return JSONResponse({"name": "undiffuse studio", "version": __version__, "limits": limits.as_dict(),
                             "tasks": list(TASKS), "grids": list(GRIDS), "precisions": list(PRECISIONS),
                             "runs_dir": str(self.runs) if self.runs else None, "out_dir": str(self.out),
                             "queue": self.queue.counts()})

    async def models(self, request: Request) -> Response:
        entries = await run_in_threadpool(self.catalogue.entries)
        return JSONResponse({"models": [e.card() for e in entries]})

    async def samplers(self, request: Request) -> Response:
        rows = [samplers.info(n) for n in samplers.names()]
        return JSONResponse({"samplers": [{"name": i.name, "order": i.order, "stochastic": i.stochastic,
                                           "adaptive": i.adaptive, "distilled": i.distilled, "summary": i.summary}
                                          for i in rows]})

    # ------------------------------------------------------------------ jobs
    def _submit(self, body: Any) -> dict[str, Any]:
        spec = parse_job(body, self.catalogue)
        job_id = self.history.new_id()
        folder = self.history.folder(job_id, create=True)
        try:
            if spec.image is not None:
                (folder / "input.png").write_bytes(spec.image)
            if spec.mask is not None:
                (folder / "mask.png").write_bytes(spec.mask)
            return self.queue.submit(Job(job_id, spec)).to_dict()
        except BaseException:
            self.history.discard(job_id)
            raise

    async def submit(self, request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(self._submit, body), status_code=202)

    async def jobs(self, request: Request) -> Response:
        return JSONResponse({"version": self.queue.version, "jobs": self.queue.snapshot()})

    async def job(self, request: Request) -> Response:
        return JSONResponse(self.queue.get(request.path_params["job"]).to_dict())

    async def cancel(self, request: Request) -> Response:
        await read_json(request)
        return JSONResponse(self.queue.cancel(request.path_params["job"]).to_dict())

    async def preview(self, request: Request) -> Response:
        job = self.queue.get(request.path_params["job"])
        data = job.preview
        if data is None:
            raise ApiError(f"job {job.id} has no preview ({job.state})", 404)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``jobs`` with the whole queue whenever it changes (at most 5 a second)."""
        if self.event_clients >= MAX_EVENT_CLIENTS:
            raise ApiError(f"too many open event streams ({MAX_EVENT_CLIENTS}); poll GET /api/jobs instead", 429)

        async def stream():
            self.event_clients += 1
            try:
                seen, quiet = -1, 0.0
                while not self.stopping:
                    version = self.queue.version
                    if version != seen:
                        seen, quiet = version, 0.0
                        data = json.dumps({"version": version, "jobs": self.queue.snapshot(EVENT_FINISHED)})
                        yield f"event: jobs\ndata: {data}\n\n"
                    elif quiet >= EVENT_KEEPALIVE:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    await asyncio.sleep(EVENT_POLL)
                    quiet += EVENT_POLL
            finally:
                self.event_clients -= 1

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ history and recall
    async def history_list(self, request: Request) -> Response:
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "limit", 50, 1, 200)
        items, total = await run_in_threadpool(self.history.list, offset, limit)
        return JSONResponse({"items": items, "total": total, "offset": offset, "limit": limit})

    async def history_item(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.history.get, request.path_params["job"]))

    async def history_delete(self, request: Request) -> Response:
        await read_json(request)
        await run_in_threadpool(self.history.delete, request.path_params["job"])
        return JSONResponse({"deleted": request.path_params["job"]})

    async def history_file(self, request: Request) -> Response:
        p = request.path_params
        path = await run_in_threadpool(self.history.file, p["job"], p["name"])
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    def _recall(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or "image" not in body:
            raise ApiError('send {"image": "<a PNG as a data URL>"}')
        data = decode_bytes(body["image"], "the image")
        open_image(data, "the image")
        try:
            params = read_params(io.BytesIO(data))
        except (ValueError, OSError):
            params = {}
        if not isinstance(params, dict) or not params:
            raise ApiError("this image carries no undiffuse parameters (only PNGs written by undiffuse do)")
        return recall_settings(params, self.catalogue)

    async def recall(self, request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(self._recall, body))

    # ------------------------------------------------------------------ dashboard
    async def runs_list(self, request: Request) -> Response:
        return JSONResponse({"runs_dir": str(self.runs) if self.runs else None,
                             "runs": await run_in_threadpool(self.dashboard.runs)})

    async def run_detail(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.dashboard.detail, request.path_params["run"]))

    async def run_sample(self, request: Request) -> Response:
        p = request.path_params
        path = await run_in_threadpool(self.dashboard.sample_file, p["run"], p["name"])
        return FileResponse(path, media_type="image/png", headers=NO_CACHE)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)


def recall_settings(params: dict[str, Any], catalogue: Catalogue) -> dict[str, Any]:
    """The form's settings from a PNG's parameters (as :func:`~undiffuse.sampling.write_images` and the tasks
    write them): a single image recalls n = 1 with its own seed, a grid its seed range."""
    warnings = []
    source = str(params.get("model", ""))
    model = catalogue.id_of_source(source) if source else None
    if source and model is None:
        warnings.append(f"the model {source!r} is not offered here; pick another")
    s: dict[str, Any] = {"model": model, "task": params.get("task", "generate")}
    for key in ("sampler", "grid", "steps", "seed", "guidance", "prompt", "sigma_min", "sigma_max", "rho", "clip_x0",
                "eps_scale", "guidance_interval", "guidance_rescale", "guidance_parallel", "precision", "strength",
                "factor", "sigma", "resample"):
        if key in params:
            s[key] = params[key]
    seeds = str(params.get("seeds", ""))
    lo, _, hi = seeds.partition("-")
    s["n"] = int(hi) - int(lo) + 1 if lo.isdigit() and hi.isdigit() and int(hi) >= int(lo) else 1
    cls = params.get("class")
    s["class"] = None if cls in (None, "all, in turn") else cls
    if params.get("autoguide"):
        s["autoguide"] = catalogue.id_of_source(str(params["autoguide"]))
    if s["task"] != "generate":
        warnings.append(f"made by {s['task']} from an uploaded image: upload it again to repeat the task")
    return {"params": params, "settings": s, "warnings": warnings}


def create_app(runs: Path | None = None, out: Path = Path("out/studio"), allowed_hosts: list[str] | None = None
               ) -> Starlette:
    """The studio's ASGI app; ``allowed_hosts`` guards against DNS rebinding (default: the loopback names)."""
    studio = Studio(runs, out)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        studio.queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(studio.queue.stop)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "error")
        return JSONResponse({"error": f"{detail}: {request.method} {request.url.path[:200]}"}, status_code=status)

    s = studio
    routes = [
        Route("/", s.index),
        Route("/api/info", api(s.info)),
        Route("/api/models", api(s.models)),
        Route("/api/samplers", api(s.samplers)),
        Route("/api/jobs", api(s.submit), methods=["POST"]),
        Route("/api/jobs", api(s.jobs), methods=["GET"]),
        Route("/api/jobs/{job}", api(s.job)),
        Route("/api/jobs/{job}/cancel", api(s.cancel), methods=["POST"]),
        Route("/api/jobs/{job}/preview.png", api(s.preview)),
        Route("/api/events", api(s.events)),
        Route("/api/history", api(s.history_list)),
        Route("/api/history/{job}", api(s.history_item), methods=["GET"]),
        Route("/api/history/{job}", api(s.history_delete), methods=["DELETE"]),
        Route("/api/recall", api(s.recall), methods=["POST"]),
        Route("/api/runs", api(s.runs_list)),
        Route("/api/runs/{run:path}", api(s.run_detail)),
        Route("/files/history/{job}/{name}", api(s.history_file)),
        Route("/files/runs/{run:path}/samples/{name}", api(s.run_sample)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOCAL_HOSTS)]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.studio = studio
    return app
