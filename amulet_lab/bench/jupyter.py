"""``JupyterLabProcess``: a throwaway JupyterLab server on 127.0.0.1 over a temporary copy of a notebooks folder.

For ``amulet-lab bench ui`` (``make ui-check``): the server runs with a random token on a free loopback port,
no browser, ``expose_app_in_browser`` (so a driver can read the kernel's state from the page), and its own
config, data, runtime, settings and workspace folders in the temporary folder, so neither the user's
Jupyter setup nor the repository's notebooks are read or written beyond the one copy. ``PYTHONPATH`` names
``root``, so the kernel imports that checkout's ``amulet_lab``. It stops by its pid: the server's own
shutdown call first (it stops its kernels), then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from amulet_lab.errors import NetworkError, ValidationError

__all__ = ["JupyterLabProcess", "free_port", "lab_command", "lab_environment"]

#: JupyterLab settings for a quiet, repeatable page: no news or update toasts.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_command(python: str, port: int, token: str, root_dir: Path, *, as_root: bool = False) -> list[str]:
    """The command line of a loopback-only, token-protected JupyterLab without a browser or terminals."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValidationError("port must be a whole number in 1..65535", field="port", value=port)
    if not token or not token.isalnum():
        raise ValidationError("token must be a non-empty alphanumeric string", field="token", value="<hidden>")
    return [python, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.open_browser=False", "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
            "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if as_root else [])


def lab_environment(base: dict[str, str], work: Path, root: Path) -> dict[str, str]:
    """``base`` with the Jupyter folders moved under ``work`` and ``root`` first on ``PYTHONPATH``."""
    env = dict(base)
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                      ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
        env[name] = str(work / sub)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


class JupyterLabProcess:
    """One JupyterLab server child process on 127.0.0.1 over a copy of ``notebooks``; a context manager."""

    def __init__(self, notebooks: str | Path, *, root: str | Path, python: str = sys.executable,
                 startup_timeout: float = 60.0) -> None:
        self.notebooks = Path(notebooks).resolve()
        if not self.notebooks.is_dir():
            raise ValidationError(f"not a folder of notebooks: {notebooks}", field="notebooks", value=str(notebooks),
                                  code="E_NO_FOLDER")
        self.root = Path(root).resolve()
        self.python = python
        self.startup_timeout = startup_timeout
        self.port = 0
        self.token = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.work: Path | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id (None when stopped)."""
        return self.process.pid if self.process is not None else None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def copy(self) -> Path:
        """The temporary copy of the notebooks folder the server serves."""
        if self.work is None:
            raise NetworkError("the JupyterLab server is not started", retryable=False)
        return self.work / "notebooks"

    def lab_url(self, notebook: str) -> str:
        """The address that opens ``notebook`` (a name inside the copy) in JupyterLab, logged in by the token."""
        return f"{self.base_url}/lab/tree/{urllib.parse.quote(notebook)}?token={self.token}"

    def _api(self, method: str, path: str, timeout: float = 2.0) -> int:
        req = urllib.request.Request(self.base_url + path, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback, our own server
            return int(resp.status)

    def start(self) -> JupyterLabProcess:
        """Copy the notebooks, start the server and wait until its API answers."""
        self.work = Path(tempfile.mkdtemp(prefix="amulet-lab-ui-"))
        shutil.copytree(self.notebooks, self.copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for name, value in _LAB_SETTINGS.items():
            target = self.work / "settings" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(value), encoding="utf-8")
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.log_path = self.work / "jupyterlab.log"
        env = lab_environment(dict(os.environ), self.work, self.root)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(lab_command(self.python, self.port, self.token, self.copy,
                                                        as_root=os.geteuid() == 0), env=env,
                                            cwd=self.copy, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if self._api("GET", "/api/status") == 200:
                    return self
            except (urllib.error.URLError, OSError):
                pass  # not listening yet: polled again below until the deadline
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise NetworkError(f"JupyterLab did not start on 127.0.0.1:{self.port}: {tail}", retryable=False)
            time.sleep(0.2)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server printed."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server by its pid (its shutdown call, then SIGTERM, then SIGKILL) and remove the copy."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                try:
                    self._api("POST", "/api/shutdown")
                except (urllib.error.URLError, OSError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            self.process = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None

    def __enter__(self) -> JupyterLabProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<JupyterLabProcess {self.base_url} pid={self.pid} notebooks={self.notebooks}>"
