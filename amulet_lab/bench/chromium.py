"""``ChromiumProcess``: a headless system Chromium on a loopback DevTools port, for ``amulet-lab bench ui``.

The browser is the machine's own (``/usr/bin/chromium``, or the path given): nothing is downloaded. It starts
with a fresh user-data folder, the flags a closed network needs (no background networking, component
updates, sync or QUIC), DevTools on 127.0.0.1 only, and it is stopped by its pid (SIGTERM, then SIGKILL of
its own process group).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from amulet_lab.errors import NetworkError, ValidationError

__all__ = ["CHROMIUM_FLAGS", "DEFAULT_CHROMIUM", "ChromiumProcess", "chromium_command", "find_chromium"]

DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Flags of a headless Chromium on a machine with no screen and a closed network (see the README).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
                  "--font-render-hinting=none")
_DEVTOOLS = re.compile(r"DevTools listening on (ws://127\.0\.0\.1:\d+/\S+)")


def find_chromium(explicit: str | None = None) -> Path:
    """The Chromium to use: ``explicit`` (AMULET_CHROMIUM, read by the caller) or /usr/bin/chromium.

    Raises ``ValidationError`` with code ``E_NO_CHROMIUM`` when it is not an executable file.
    """
    path = Path(explicit).expanduser() if explicit else Path(DEFAULT_CHROMIUM)
    if not path.is_file() or not os.access(path, os.X_OK):
        where = f"AMULET_CHROMIUM={explicit}" if explicit else DEFAULT_CHROMIUM
        raise ValidationError(
            f"no Chromium at {where}: install one (Debian: apt-get install chromium) or set AMULET_CHROMIUM "
            "to a Chromium executable; the UI check needs a local browser and downloads none",
            field="AMULET_CHROMIUM" if explicit else "chromium", value=str(path), code="E_NO_CHROMIUM")
    return path


def chromium_command(executable: str | Path, user_data_dir: str | Path, *, port: int = 0,
                     window: tuple[int, int] = (1400, 1000)) -> list[str]:
    """The command line of a headless Chromium with DevTools on 127.0.0.1:``port`` (0: any free port)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise ValidationError("port must be a whole number in 0..65535", field="port", value=port)
    width, height = window
    if min(width, height) < 200:
        raise ValidationError("window must be at least 200x200 pixels", field="window", value=window)
    return [str(executable), *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}", f"--window-size={width},{height}", "about:blank"]


class ChromiumProcess:
    """One headless Chromium child process; ``ws_url`` is its DevTools endpoint. A context manager."""

    def __init__(self, executable: str | Path, *, startup_timeout: float = 30.0,
                 window: tuple[int, int] = (1400, 1000)) -> None:
        self.executable = Path(executable)
        self.startup_timeout = startup_timeout
        self.window = window
        self.process: subprocess.Popen[str] | None = None
        self.ws_url: str | None = None
        self.user_data_dir: Path | None = None
        self._lines: list[str] = []

    @property
    def pid(self) -> int | None:
        """The browser's process id (None when stopped)."""
        return self.process.pid if self.process is not None else None

    def _read_stderr(self, found: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            if len(self._lines) < 200:
                self._lines.append(line.rstrip())
            match = _DEVTOOLS.search(line)
            if match and self.ws_url is None:
                self.ws_url = match.group(1)
                found.set()
        found.set()  # the browser closed its stderr: it has exited

    def start(self) -> ChromiumProcess:
        """Start the browser with a fresh user-data folder and wait for its DevTools address."""
        self.user_data_dir = Path(tempfile.mkdtemp(prefix="amulet-chromium-"))
        cmd = chromium_command(self.executable, self.user_data_dir, window=self.window)
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        text=True, start_new_session=True)
        found = threading.Event()
        threading.Thread(target=self._read_stderr, args=(found,), name="chromium-stderr", daemon=True).start()
        found.wait(self.startup_timeout)
        if self.ws_url is None:
            tail = "\n".join(self._lines[-10:])
            self.stop()
            raise NetworkError(f"Chromium gave no DevTools address within {self.startup_timeout:.0f} s: {tail}",
                               retryable=False)
        return self

    def stop(self) -> None:
        """Stop the browser by its pid (SIGTERM, then SIGKILL of its process group) and remove its profile."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): its helpers too
                    proc.wait(10)
            self.process = None
        if self.user_data_dir is not None:
            for _ in range(3):  # a helper process may still be writing into the profile for a moment
                shutil.rmtree(self.user_data_dir, ignore_errors=True)
                if not self.user_data_dir.exists():
                    break
                time.sleep(0.2)
            self.user_data_dir = None

    def __enter__(self) -> ChromiumProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ChromiumProcess {self.executable} pid={self.pid} devtools={self.ws_url}>"
