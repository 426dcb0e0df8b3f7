"""Memory usage, pressure levels, responders that act when pressure rises, and garbage collection."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import psutil

from amulet_lab.display import html_table
from amulet_lab.errors import ValidationError
from amulet_lab.memory._sampling import MB, check_interval, current_process

if TYPE_CHECKING:
    from amulet_lab.config import Settings

__all__ = [
    "MemoryUsage",
    "MemoryMonitor",
    "GCManager",
    "LEVELS",
    "shrink_caches_responder",
    "gc_responder",
    "image_cache_responder",
]

logger = logging.getLogger("amulet_lab.memory")

#: Pressure levels, lowest first; a responder runs when the level moves to a later one.
LEVELS = ("normal", "warning", "critical")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}

#: A responder: called with the new level and the pressure check that raised it.
Responder = Callable[[str, dict[str, Any]], Any]

#: The documented defaults (``amulet_lab.config.VARIABLES``) of the plain-value constructors below.
DEFAULT_WARNING_THRESHOLD = 0.8
DEFAULT_CRITICAL_THRESHOLD = 0.9
DEFAULT_SHRINK_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class MemoryUsage:
    """One reading: this process's RSS and share of memory, the system's memory, and the peak RSS seen."""

    rss_mb: float
    percent: float  # this process's RSS / system total, a fraction 0..1
    system_available_mb: float
    system_total_mb: float
    system_percent_used: float  # (total - available) / total, a fraction 0..1 (not 0..100)
    peak_rss_mb: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict, rounded for reports."""
        return {k: round(v, 4) for k, v in dataclasses.asdict(self).items()}


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (returns freed heap pages to the OS), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    return getattr(libc, "malloc_trim", None)


class GCManager:
    """Runs the garbage collector generation by generation and reports what it freed."""

    def __init__(self, *, process: Any = None, trim: bool = True, timer: Callable[[], float] = time.perf_counter):
        self._process = process
        self._trim = trim
        self._timer = timer
        self._lock = threading.Lock()
        self._trim_fn: Callable[[int], int] | None | bool = False  # False: not looked up yet
        self.runs = 0
        self.total_collected = 0
        self.total_freed_mb = 0.0
        self.last: dict[str, Any] | None = None

    def _rss_mb(self) -> float:
        return (self._process or current_process()).memory_info().rss / MB

    def perform_cleanup(self) -> dict[str, Any]:
        """Collect generations 0, 1, 2 (and trim the C heap on glibc); report objects collected and RSS freed."""
        with self._lock:  # two cleanups at once would only race for the same garbage
            start = self._timer()
            before = self._rss_mb()
            collected = {f"gen{g}": gc.collect(g) for g in range(3)}
            trimmed = False
            if self._trim:
                if self._trim_fn is False:
                    self._trim_fn = _libc_malloc_trim()
                if self._trim_fn:
                    # pymalloc and glibc keep freed pages for reuse; malloc_trim hands them back so RSS
                    # actually falls (which is what pressure is measured on).
                    trimmed = bool(self._trim_fn(0))  # type: ignore[operator]
            after = self._rss_mb()
            report = {
                "collected": collected,
                "collected_total": sum(collected.values()),
                "uncollectable": len(gc.garbage),
                "rss_before_mb": round(before, 2),
                "rss_after_mb": round(after, 2),
                "freed_mb": round(before - after, 2),
                "heap_trimmed": trimmed,
                "duration_s": round(self._timer() - start, 6),
            }
            self.runs += 1
            self.total_collected += report["collected_total"]
            self.total_freed_mb += max(0.0, before - after)
            self.last = report
        logger.debug("gc cleanup: %s", report)
        return report

    def stats(self) -> dict[str, Any]:
        """Runs so far, objects collected, MB freed, and the last report."""
        return {"runs": self.runs, "total_collected": self.total_collected,
                "total_freed_mb": round(self.total_freed_mb, 2), "last": self.last}

    def __repr__(self) -> str:
        return f"GCManager(runs={self.runs}, total_collected={self.total_collected})"


_gc_manager: GCManager | None = None
_gc_manager_lock = threading.Lock()


def default_gc_manager() -> GCManager:
    """The process-wide ``GCManager`` (``amulet_lab.memory.gc_manager``), created on first use."""
    global _gc_manager
    with _gc_manager_lock:
        if _gc_manager is None:
            _gc_manager = GCManager()
        return _gc_manager


def gc_responder(level: str, check: dict[str, Any], *, manager: GCManager | None = None) -> dict[str, Any]:
    """Built-in responder: a full garbage collection (``GCManager.perform_cleanup``)."""
    return (manager or default_gc_manager()).perform_cleanup()


def shrink_caches_responder(caches: Iterable[Any], fraction: float | None = None) -> Responder:
    """A responder calling ``.shrink(fraction)`` on each cache (None: AMULET_CACHE_SHRINK_FRACTION's default, 0.5)."""
    caches = list(caches)
    if fraction is None:
        fraction = DEFAULT_SHRINK_FRACTION
    for cache in caches:
        if not callable(getattr(cache, "shrink", None)):
            raise ValidationError(f"{type(cache).__name__} has no shrink(fraction) method", field="caches",
                                  value=type(cache).__name__, code="E_NOT_SHRINKABLE")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValidationError("fraction must be within 0..1", field="fraction", value=fraction, code="E_FRACTION")

    def shrink_caches(level: str, check: dict[str, Any]) -> dict[str, int]:
        return {f"{type(c).__name__}#{i}": int(c.shrink(fraction)) for i, c in enumerate(caches)}

    shrink_caches.__qualname__ = f"shrink_caches_responder({len(caches)} caches, {fraction})"
    return shrink_caches


def image_cache_responder(level: str, check: dict[str, Any], *, fraction: float | None = None) -> dict[str, int]:
    """Built-in responder of the process monitor: shrinks the process image cache if one exists (never creates it).

    The share dropped is ``fraction`` when given, else the one the monitor put in ``check`` (its own
    ``cache_shrink_fraction``), else the default.
    """
    if "amulet_lab.cache" not in sys.modules:
        return {}  # nothing imported the cache module: there is no cache to shrink
    from amulet_lab.cache import peek_image_cache

    cache = peek_image_cache()
    if cache is None:
        return {}
    if fraction is None:
        fraction = check.get("cache_shrink_fraction")
    return shrink_caches_responder([cache], fraction)(level, check)


class MemoryMonitor:
    """Watches this process and the system, classifies memory pressure, and runs responders when it rises.

    Basis of the level: ``score = max(system_used_fraction, process_budget_fraction)`` where
    ``system_used_fraction = (total - available) / total`` of the machine, and
    ``process_budget_fraction = RSS / budget_mb`` (only when a budget is set). The level is
    ``critical`` when score >= ``critical_threshold``, ``warning`` when >= ``warning_threshold``, else
    ``normal`` (``from_settings`` takes them from the AMULET_MEMORY_* settings). Responders run only when
    the level rises (normal->warning, warning->critical, normal->critical); a fall is recorded in the
    history but runs nothing. Periodic checks run only after ``start()``.
    """

    def __init__(
        self,
        *,
        warning_threshold: float = DEFAULT_WARNING_THRESHOLD,
        critical_threshold: float = DEFAULT_CRITICAL_THRESHOLD,
        budget_mb: float | None = None,
        cache_shrink_fraction: float = DEFAULT_SHRINK_FRACTION,
        process: Any = None,
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
        builtin_responders: bool = True,
        history: int = 200,
        timer: Callable[[], float] = time.time,
    ) -> None:
        self.configure(warning_threshold=warning_threshold, critical_threshold=critical_threshold,
                       budget_mb=budget_mb, cache_shrink_fraction=cache_shrink_fraction)
        self._process = process
        self._virtual_memory = virtual_memory
        self._timer = timer
        self._lock = threading.RLock()
        self._responders: list[Responder] = []
        self._level = "normal"
        self._peak_rss_mb = 0.0
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.interval_s: float | None = None
        self.checks = 0
        self.loop_errors = 0
        self._last_check: dict[str, Any] | None = None
        if builtin_responders:
            self._responders.append(gc_responder)

    def configure(self, *, warning_threshold: float, critical_threshold: float, budget_mb: float | None,
                  cache_shrink_fraction: float) -> None:
        """Set the thresholds, the budget and the shrink fraction (checked first; responders are kept)."""
        for name, value in (("warning_threshold", warning_threshold), ("critical_threshold", critical_threshold),
                            ("cache_shrink_fraction", cache_shrink_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValidationError(f"{name} must be a number within 0..1", field=name, value=value)
        if warning_threshold >= critical_threshold:
            raise ValidationError("warning_threshold must be below critical_threshold", field="warning_threshold",
                                  value=warning_threshold)
        if budget_mb is not None and (isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float))
                                      or not budget_mb > 0):
            raise ValidationError("budget_mb must be a number of MB > 0, or None", field="budget_mb", value=budget_mb)
        self.warning_threshold = float(warning_threshold)
        self.critical_threshold = float(critical_threshold)
        self.budget_mb = budget_mb
        self.cache_shrink_fraction = float(cache_shrink_fraction)

    @staticmethod
    def settings_values(settings: Settings) -> dict[str, Any]:
        """The ``configure`` arguments that ``settings`` hold (AMULET_MEMORY_*, AMULET_CACHE_SHRINK_FRACTION)."""
        return dict(warning_threshold=settings.memory_warning_threshold,
                    critical_threshold=settings.memory_critical_threshold, budget_mb=settings.memory_budget_mb,
                    cache_shrink_fraction=settings.cache_shrink_fraction)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> MemoryMonitor:
        """A monitor with the AMULET_MEMORY_* thresholds, budget and AMULET_CACHE_SHRINK_FRACTION of ``settings``."""
        return cls(**{**cls.settings_values(settings), **kwargs})

    # -- readings -------------------------------------------------------------------------------------
    def get_current_usage(self) -> MemoryUsage:
        """This process's RSS and share, the system's available/total/used share, and the peak RSS seen."""
        rss_mb = (self._process or current_process()).memory_info().rss / MB
        vm = self._virtual_memory()
        total_mb = vm.total / MB
        available_mb = vm.available / MB
        with self._lock:
            self._peak_rss_mb = max(self._peak_rss_mb, rss_mb)
            peak = self._peak_rss_mb
        return MemoryUsage(
            rss_mb=rss_mb,
            percent=rss_mb / total_mb if total_mb else 0.0,
            system_available_mb=available_mb,
            system_total_mb=total_mb,
            system_percent_used=(total_mb - available_mb) / total_mb if total_mb else 0.0,
            peak_rss_mb=peak,
        )

    @property
    def level(self) -> str:
        """The level found by the last check."""
        return self._level

    def check_memory_pressure(self) -> dict[str, Any]:
        """Classify pressure now (see the class docstring for the basis); runs responders if the level rose."""
        return self._check(self.get_current_usage())

    @property
    def last_check(self) -> dict[str, Any] | None:
        """The result of the latest pressure check (None before the first); reading it changes nothing."""
        return self._last_check

    def _check(self, usage: MemoryUsage) -> dict[str, Any]:
        budget = self.budget_mb
        budget_fraction = usage.rss_mb / budget if budget else None
        score = max(usage.system_percent_used, budget_fraction or 0.0)
        if score >= self.critical_threshold:
            level = "critical"
        elif score >= self.warning_threshold:
            level = "warning"
        else:
            level = "normal"
        check = {
            "level": level,
            "should_gc": level != "normal",
            "basis": "max(system_used_fraction, rss/budget)" if budget else "system_used_fraction",
            "score": round(score, 4),
            "system_used_fraction": round(usage.system_percent_used, 4),
            "process_budget_fraction": None if budget_fraction is None else round(budget_fraction, 4),
            "rss_mb": round(usage.rss_mb, 2),
            "budget_mb": budget,
            "warning_threshold": self.warning_threshold,
            "critical_threshold": self.critical_threshold,
            "cache_shrink_fraction": self.cache_shrink_fraction,  # for responders: the monitor's own share
            "time": self._timer(),
        }
        with self._lock:
            self._last_check = check
            self.checks += 1
            previous, self._level = self._level, level
            if level == previous:
                return check
            event = {"time": self._timer(), "from": previous, "to": level, "score": check["score"],
                     "rss_mb": check["rss_mb"], "responses": {}, "errors": {}}
            if _RANK[level] > _RANK[previous]:
                responders = list(self._responders)
                logger.warning("memory pressure rose %s -> %s (score %.3f, basis %s)",
                               previous, level, score, check["basis"])
            else:
                responders = []
                logger.info("memory pressure fell %s -> %s (score %.3f)", previous, level, score)
            self.events.append(event)
        for fn in responders:
            name = getattr(fn, "__qualname__", repr(fn))
            try:
                event["responses"][name] = fn(level, check)
            except Exception as exc:  # one failing responder must not stop the others; it is logged and kept
                logger.exception("memory responder %s failed", name)
                event["errors"][name] = f"{type(exc).__name__}: {exc}"
        return check

    # -- responders -----------------------------------------------------------------------------------
    def register_responder(self, fn: Responder) -> Responder:
        """Run ``fn(level, check)`` whenever the level rises; returns ``fn`` (usable as a decorator)."""
        if not callable(fn):
            raise ValidationError("a responder must be callable", field="fn", value=fn, code="E_RESPONDER")
        with self._lock:
            if fn not in self._responders:
                self._responders.append(fn)
        return fn

    def unregister_responder(self, fn: Responder) -> bool:
        """Remove ``fn``; returns whether it was registered."""
        with self._lock:
            if fn in self._responders:
                self._responders.remove(fn)
                return True
            return False

    @property
    def responders(self) -> list[Responder]:
        """The registered responders, in the order they run."""
        with self._lock:
            return list(self._responders)

    # -- periodic monitoring --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the periodic monitoring thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, interval_s: float = 5.0) -> MemoryMonitor:
        """Check pressure every ``interval_s`` seconds in a daemon thread until ``stop()``; no-op if running."""
        check_interval(interval_s)
        with self._lock:
            if self.running:
                return self
            self.interval_s = float(interval_s)
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, args=(self.interval_s,),
                                            name="amulet-memory-monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.check_memory_pressure()
            except Exception:  # a failed reading must not kill monitoring; it is logged and counted
                self.loop_errors += 1
                logger.exception("memory pressure check failed")

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop periodic monitoring and wait up to ``timeout`` s for the thread to end.

        A thread still alive after the wait (a responder stuck in a long call) keeps its handle, so
        ``running`` stays true and ``start()`` does not launch a second loop beside it.
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        with self._lock:
            if thread.is_alive():
                logger.warning("memory monitor thread did not stop within %ss; it will end after its current check",
                               timeout)
            elif self._thread is thread:
                self._thread = None

    # -- reports --------------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """For the health report: current usage, the last pressure check, the history of level changes.

        Reading stats has no side effects: it reports the last check (of ``start()``'s loop or an explicit
        ``check_memory_pressure()``), so polling /health never runs gc or shrinks caches. Only when no check
        has ever run is one run, from the same usage reading.
        """
        usage = self.get_current_usage()
        check = self._last_check
        if check is None:
            check = self._check(usage)
        return {
            "current": usage.to_dict(),
            "pressure_check": check,
            "events": list(self.events),
            "monitoring": self.running,
            "interval_s": self.interval_s,
            "checks": self.checks,
            "responders": [getattr(fn, "__qualname__", repr(fn)) for fn in self.responders],
        }

    def __repr__(self) -> str:
        return f"MemoryMonitor(level={self._level!r}, peak_rss_mb={self._peak_rss_mb:.1f}, running={self.running})"

    def _repr_html_(self) -> str:
        usage = self.get_current_usage()
        rows = [
            ("level", self._level),
            ("process RSS", f"{usage.rss_mb:.1f} MB ({usage.percent:.2%} of RAM)"),
            ("peak RSS seen", f"{usage.peak_rss_mb:.1f} MB"),
            ("system in use", f"{usage.system_percent_used:.1%} of {usage.system_total_mb / 1024:.1f} GB"),
            ("budget", "none" if not self.budget_mb else f"{self.budget_mb} MB"),
            ("monitoring", f"every {self.interval_s}s" if self.running else "off"),
            ("pressure events", str(len(self.events))),
        ]
        return html_table(rows, "MemoryMonitor")

