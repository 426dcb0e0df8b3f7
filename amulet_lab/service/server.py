"""Running the app under uvicorn: in the foreground (``serve``), in a thread, or in a child process.

``ServerThread`` suits notebooks and tests that talk to a real socket; ``ServerProcess``
runs ``python -m amulet_lab serve`` so its memory can be measured apart from the caller's.
Both bind 127.0.0.1 unless told otherwise and stop cleanly (``should_exit``, then SIGTERM).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

import uvicorn

from amulet_lab.config import Settings
from amulet_lab.errors import NetworkError, ValidationError

__all__ = ["check_bind", "uvicorn_config", "serve", "ServerThread", "ServerProcess", "free_port"]


def check_bind(host: str, port: int) -> None:
    """``ValidationError`` unless ``host`` is a non-empty string and ``port`` an int in 0..65535 (0: any free port)."""
    if not isinstance(host, str) or not host.strip():
        raise ValidationError("host must be a non-empty string (e.g. 127.0.0.1)", field="host", value=repr(host)[:80])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError("port must be an int in 0..65535", field="port", value=repr(port)[:80])


#: Most bytes of a request line plus headers (h11 answers more with 431, in the envelope).
MAX_HEADER_BYTES = 16 * 1024
#: Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE_S = 5


def _service_settings(app: Any) -> Settings | None:
    state = getattr(getattr(app, "state", None), "service", None)
    return getattr(state, "settings", None)


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
                   settings: Settings | None = None) -> uvicorn.Config:
    """The uvicorn config the service runs with (limits from ``settings``, else the app's own, else the defaults).

    h11 with ``service.protocol.envelope_protocol``: errors raised before the app (bad Content-Length,
    headers over ``MAX_HEADER_BYTES``) are answered in the envelope; at most AMULET_MAX_CONNECTIONS open
    connections; a request head must arrive within AMULET_UPLOAD_IDLE_TIMEOUT_S; keep-alive ``KEEP_ALIVE_S``.
    """
    from amulet_lab.service.protocol import envelope_protocol

    check_bind(host, port)
    settings = settings or _service_settings(app) or Settings()
    protocol = envelope_protocol(max_connections=settings.max_connections,
                                 head_timeout_s=settings.upload_idle_timeout_s)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        lifespan="on",
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        # uvicorn's own cap answers in plain text; ours (in the protocol) answers in the envelope first.
        limit_concurrency=settings.max_connections + 64,
        backlog=min(4096, max(128, settings.max_connections)),
        # The app decides whether X-Forwarded-For is trusted (settings.trust_forwarded_for); uvicorn's own
        # proxy handling would otherwise rewrite the client address for every request from 127.0.0.1.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service in the foreground until interrupted."""
    from amulet_lab.service.app import create_app

    check_bind(host, port)  # a bad address is refused before the model starts loading
    app = create_app(settings)  # refuses a missing secret key before anything binds
    uvicorn.Server(uvicorn_config(app, host, port, log_level=settings.log_level, settings=settings)).run()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """The app under uvicorn in a daemon thread on an OS-chosen port; a context manager."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 30.0) -> None:
        self.server = uvicorn.Server(uvicorn_config(app, host, port))
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        """Start serving; returns once the socket listens."""
        self._thread = threading.Thread(target=self.server.run, name="amulet-lab-server", daemon=True)
        self._thread.start()
        try:
            deadline = time.monotonic() + self.startup_timeout
            while not self.server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise NetworkError("the uvicorn server did not start", retryable=False, context={"host": self.host})
                time.sleep(0.01)
            self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        except BaseException:
            # A timeout (or Ctrl-C) must not leave a half-started server behind: should_exit ends its loop.
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit (``should_exit``) and wait for the thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerThread {self.url} started={self.server.started}>"


class ServerProcess:
    """``python -m amulet_lab serve`` in a child process with the given ``AMULET_*`` environment."""

    def __init__(
        self,
        env: Mapping[str, str],
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        startup_timeout: float = 60.0,
        wait_ready: bool = False,
    ) -> None:
        self.env = {**os.environ, **env}
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.wait_ready = wait_ready
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._stderr_text = ""

    @property
    def url(self) -> str:
        """Base URL of the child's server."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.process is None:
            raise NetworkError("the server process is not running", retryable=False)
        return self.process.pid

    def start(self) -> ServerProcess:
        """Start the child and wait until ``/health/live`` (or ``/health/ready`` when ``wait_ready``) answers 200."""
        cmd = [sys.executable, "-m", "amulet_lab", "serve", "--host", self.host, "--port", str(self.port)]
        # stderr goes to a temp file, not a pipe: an undrained pipe would block the child once it filled up.
        self._stderr = tempfile.TemporaryFile()
        self._stderr_text = ""
        try:
            self.process = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=self._stderr)
            self._wait_started()
        except BaseException:
            # Whatever went wrong (timeout, failed load, Ctrl-C), the child and its stderr file go with it.
            self.stop()
            raise
        return self

    def _wait_started(self) -> None:
        import httpx

        assert self.process is not None
        probe = "/health/ready" if self.wait_ready else "/health/live"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    err = self.stderr_text()[-2000:]
                    raise NetworkError(f"the server process exited with {self.process.returncode}: {err}", retryable=False)
                try:
                    response = client.get(probe)
                except httpx.TransportError:
                    response = None  # not listening yet
                if response is not None and response.status_code == 200:
                    return
                if response is not None and response.status_code == 503:
                    details = response.json().get("error", {}).get("details", {})
                    if details.get("loading") is False:  # loading is over and failed: waiting is pointless
                        raise NetworkError(
                            f"the server's model could not be loaded ({details.get('error')}): {self.stderr_text()[-1500:]}",
                            retryable=False,
                        )
                if time.monotonic() > deadline:
                    raise NetworkError(f"the server did not answer {probe} within {self.startup_timeout}s", retryable=False)
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child (uvicorn shuts down gracefully), then SIGKILL if it lingers; close its stderr file."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
        finally:
            if self._stderr is not None:
                self._stderr_text = self.stderr_text()  # kept for error messages after the file is gone
                self._stderr.close()
                self._stderr = None

    def stderr_text(self) -> str:
        """What the child wrote to stderr so far (after ``stop``: what it wrote in all)."""
        if self._stderr is None:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = self.process is not None and self.process.poll() is None
        return f"<ServerProcess {self.url} running={running}>"
