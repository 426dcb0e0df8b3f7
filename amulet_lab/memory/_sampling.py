"""Reading this process's resident set size (RSS), once or in a background sampling thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from amulet_lab.errors import ValidationError

__all__ = ["MB", "RssSampler", "check_interval", "current_process", "rss_bytes"]

MB = 1024 * 1024

_process: psutil.Process | None = None
_process_lock = threading.Lock()


def check_interval(interval_s: Any) -> float:
    """``interval_s`` as a float when it is a positive number of seconds, else a ``ValidationError`` (E_INTERVAL)."""
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not interval_s > 0:
        raise ValidationError("interval_s must be a positive number of seconds", field="interval_s", value=interval_s,
                              code="E_INTERVAL")
    return float(interval_s)


def current_process() -> psutil.Process:
    """This process as a ``psutil.Process``, created on first use (psutil caches nothing at import)."""
    global _process
    with _process_lock:
        if _process is None:
            _process = psutil.Process()
        return _process


def rss_bytes(process: Any = None) -> int:
    """Resident set size of ``process`` (default: this one), bytes."""
    return int((process or current_process()).memory_info().rss)


class RssSampler:
    """Samples RSS every ``interval_s`` in a daemon thread while active; tracks the peak over the RSS at start.

    Used as a context manager. ``on_sample(rss_bytes)`` is called from the sampling thread after each
    sample; when it returns True the sampler stops (a watchdog that has acted needs no more samples).
    A spike shorter than ``interval_s`` between two samples is not seen: the peak is a lower bound.
    """

    def __init__(
        self,
        interval_s: float = 0.01,
        *,
        process: Any = None,
        on_sample: Callable[[int], bool | None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.interval_s = check_interval(interval_s)
        self._process = process or current_process()
        self._on_sample = on_sample
        self._timer = timer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.start_rss = 0
        self.peak_rss = 0
        self.last_rss = 0
        self.samples = 0
        self.started_at = 0.0
        self.elapsed_s = 0.0

    def sample(self) -> int:
        """Take one sample now (from any thread) and update the peak; returns the RSS in bytes."""
        rss = rss_bytes(self._process)
        with self._lock:
            self.samples += 1
            self.last_rss = rss
            if rss > self.peak_rss:
                self.peak_rss = rss
        return rss

    @property
    def peak_delta_bytes(self) -> int:
        """Highest RSS seen minus the RSS at start (0 if it never grew)."""
        return max(0, self.peak_rss - self.start_rss)

    @property
    def delta_bytes(self) -> int:
        """Last RSS seen minus the RSS at start (may be negative)."""
        return self.last_rss - self.start_rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = self.sample()
            if self._on_sample is not None and self._on_sample(rss):
                return

    def start(self) -> RssSampler:
        """Record the starting RSS and start the sampling thread."""
        self.start_rss = self.peak_rss = self.last_rss = rss_bytes(self._process)
        self.started_at = self._timer()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="amulet-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, then take a last sample so a growth still held at the end is counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        self.elapsed_s = self._timer() - self.started_at

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"RssSampler(interval_s={self.interval_s}, peak_delta_mb={self.peak_delta_bytes / MB:.1f}, "
                f"samples={self.samples})")
