"""The machine a benchmark ran on, and a reference workload timed in the same run.

Benchmark figures mean little without the machine beside them; the reference workload (a fixed
torch matmul) lets ``compare`` divide out a machine that is slower today (shared cores, thermal
throttling) so that it is not read as a regression of our code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import ValidationError

__all__ = ["machine_info", "machine_id", "hardware_id", "DIRTY_PATHS", "git_commit", "cpu_model", "reference_workload", "REFERENCE_NAME"]

#: The paths whose changes make a run's commit ``-dirty`` (code and its dependencies, not outputs).
DIRTY_PATHS = ("amulet_lab", "notebooks", "pyproject.toml", "requirements.txt")

#: The name of the default reference workload; it changes when the workload does.
REFERENCE_NAME = "matmul-f32-256-t1-min"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def git_commit(root: str | Path = PROJECT_ROOT) -> str:
    """The checkout's commit (``git rev-parse HEAD``), with ``-dirty`` appended when the code differs from it,
    or ``"unknown"`` outside a git checkout.

    Only what the benchmark runs counts as code: ``DIRTY_PATHS`` (the package, the notebooks, the
    dependency lists), new untracked files there included; ``reports/`` and other output do not.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False)
        except (FileNotFoundError, subprocess.TimeoutExpired, NotADirectoryError):  # no git binary / hung / no root
            return None

    done = git("rev-parse", "HEAD")
    commit = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    if not commit:
        return "unknown"
    # A run of uncommitted code must not be filed under the commit it started from.
    status = git("status", "--porcelain", "--", *DIRTY_PATHS)
    dirty = status is not None and status.returncode == 0 and bool(status.stdout.strip())
    return f"{commit}-dirty" if dirty else commit


def _hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


@functools.lru_cache(maxsize=1)
def _static_info() -> dict[str, Any]:
    import psutil

    host = socket.gethostname()
    model = cpu_model()
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    total_bytes = psutil.virtual_memory().total
    return {
        # The id names the kind of hardware, not the host: short-lived CI and dev machines of one kind
        # (same CPU, cores and memory) share a history and compare with each other.
        "machine_id": hardware_id(model, logical, total_bytes),
        "hostname_hash": _hash(host),
        "cpu_model": model,
        "cores_logical": logical,
        "cores_physical": physical,
        "memory_total_mb": round(total_bytes / 2**20),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def hardware_id(cpu: str, logical_cores: int, memory_bytes: int) -> str:
    """A short id of a kind of machine: hash of the CPU model, logical cores and memory rounded to GiB."""
    return _hash(f"{cpu}|{int(logical_cores)}|{round(memory_bytes / 2**30)}GiB")


def machine_id() -> str:
    """A short stable id of this kind of machine (``hardware_id`` of this one; the host name plays no part)."""
    return str(_static_info()["machine_id"])


def machine_info(*, torch_threads: int | None = None, root: str | Path = PROJECT_ROOT) -> dict[str, Any]:
    """CPU model, cores, memory, Python, torch version and threads, git commit and machine id."""
    import torch

    info = dict(_static_info())
    info["torch"] = torch.__version__
    info["torch_threads"] = int(torch_threads if torch_threads else torch.get_num_threads())
    info["git_commit"] = git_commit(root)
    return info


def reference_workload(
    *,
    size: int = 256,
    number: int = 8,
    repeat: int = 15,
    threads: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time a fixed float32 matmul on ``threads`` torch threads: ``ms`` is the fastest of ``repeat``
    rounds of ``number`` calls (per call); the median is kept too.

    The fastest round and one thread, because on a shared machine the median of a multi-threaded
    matmul swings tenfold with other people's load, while the single-thread minimum tracks what the
    machine itself can do; that is the figure the history is normalised by.
    """
    import torch

    for name, value in (("size", size), ("number", number), ("repeat", repeat), ("threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValidationError(f"{name} must be a whole number >= 1, got {value!r}", field=name, value=value)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen)
        b = torch.randn(size, size, generator=gen)
        torch.mm(a, b)  # warm-up: first call pays for allocation and kernel selection
        rounds = []
        for _ in range(repeat):
            start = timer()
            for _ in range(number):
                torch.mm(a, b)
            rounds.append((timer() - start) / number * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
    return {
        "name": f"matmul-f32-{size}-t{threads}-min",
        "ms": min(rounds),
        "median_ms": statistics.median(rounds),
        "rounds_ms": [round(r, 4) for r in rounds],
        "torch_threads": threads,
    }
