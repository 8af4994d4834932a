"""Starting the studio: the loopback check, the socket, torch's threads, uvicorn; and a background server for
tests and scripts."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path

import uvicorn

from ..errors import UndiffuseError
from .app import LOCAL_HOSTS, create_app


def host_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address: the studio has no login."""
    if host in ("localhost", ""):
        return None if host else "an empty --host listens on every interface"
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: listening on {host}, not on 127.0.0.1: anyone who can reach this machine on the network can "
            "use the studio, read its history and run jobs (it has no login)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (a port in use, a host that is not here)."""
    if not 0 <= port <= 65535:
        raise UndiffuseError(f"--port must be 0-65535, got {port}")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(64)
    except OSError as err:
        raise UndiffuseError(f"cannot listen on {host}:{port}: {err.strerror or err}"
                             + ("; is another studio running? pass --port" if err.errno == 98 else "")) from None
    sock.set_inheritable(True)
    return sock


def _allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: the loopback names, and the bound host when it is another one (any, for 0.0.0.0)."""
    if host_warning(host) is None:
        return LOCAL_HOSTS
    return ["*"] if host in ("0.0.0.0", "::", "") else [*LOCAL_HOSTS, host]


def limit_threads() -> int:
    """Torch threads for the worker: all cores but one (left to the server), at least one."""
    import torch

    n = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(n)
    return n


class _Server(uvicorn.Server):
    """uvicorn's server that first tells the studio it stops, so open event streams end and the stop is clean."""

    def __init__(self, config: uvicorn.Config, studio):
        super().__init__(config)
        self.studio = studio

    def handle_exit(self, sig, frame) -> None:
        self.studio.stopping = True
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        self.studio.stopping = True
        self.should_exit = True


def serve(host: str = "127.0.0.1", port: int = 7860, runs: Path | None = Path("runs"),
          out: Path = Path("out/studio")) -> None:
    """Serve the studio until Ctrl-C."""
    warning = host_warning(host)
    if warning:
        print(warning, flush=True)
    sock = bind(host, port)
    app = create_app(runs, out, allowed_hosts=_allowed_hosts(host))
    threads = limit_threads()
    shown = f"[{host}]" if ":" in host else host
    print(f"undiffuse studio: http://{shown}:{sock.getsockname()[1]}/  (models from the package and {runs}; "
          f"history in {out}; {threads} torch thread{'s' * (threads > 1)}; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    try:
        _Server(config, app.state.studio).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has stopped: stopping is what was asked
        pass
    print("undiffuse studio stopped", flush=True)


class BackgroundStudio:
    """The studio on a free loopback port in a thread of this process (tests, scripts); a context manager."""

    def __init__(self, runs: Path | None, out: Path, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.app = create_app(runs, out)
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
        self.server = _Server(config, self.app.state.studio)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundStudio:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the studio did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.thread.join(15)
        self.sock.close()
