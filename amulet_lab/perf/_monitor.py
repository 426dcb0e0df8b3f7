"""``PerformanceMonitor`` and ``timed_operation``: per-operation timings in bounded memory.

Per operation the monitor keeps running totals over *all* calls (count, errors, total, min, max, the
first start and last end for throughput) and a ``deque(maxlen=window)`` of the last ``window`` durations
for percentiles: memory is fixed per operation name, however many calls are recorded. Percentiles are
``numpy.percentile`` (linear interpolation) over that window, computed only when stats are asked for, so
``record`` stays a few hundred nanoseconds of pure Python and importing this module does not load numpy.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from amulet_lab.errors import ValidationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PerformanceMonitor", "performance_monitor", "timed_operation"]

F = TypeVar("F", bound=Callable[..., Any])
PERCENTILES = (50, 90, 95, 99)
STAT_KEYS = ("count", "errors", "error_rate", "total_duration", "avg_duration", "min_duration", "max_duration",
             "p50", "p90", "p95", "p99", "throughput")


class _Op:
    """Running figures of one operation name."""

    __slots__ = ("count", "errors", "total", "min", "max", "window", "first_start", "last_end", "values")

    def __init__(self, window: int) -> None:
        self.count = self.errors = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0
        self.window: deque[float] = deque(maxlen=window)
        self.first_start = math.nan
        self.last_end = math.nan
        self.values: dict[str, list[float]] = {}  # key -> [count, last, total, max]


class PerformanceMonitor:
    """Count, errors, total/mean/min/max, p50-p99 over a bounded window, throughput; per operation name."""

    def __init__(self, window: int = 1000, *, timer: Callable[[], float] = time.perf_counter) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValidationError("window must be an int >= 1", field="window", value=window)
        self.window = window
        self.timer = timer
        self._lock = threading.Lock()
        self._ops: dict[str, _Op] = {}

    def record(self, name: str, duration_s: float, error: bool = False) -> None:
        """Record one call of ``name`` that took ``duration_s`` seconds (``error``: it raised)."""
        if type(name) is not str or not name:
            raise ValidationError("operation name must be a non-empty str", field="name", value=name)
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not 0 <= duration_s < math.inf:
            raise ValidationError("duration_s must be a finite number of seconds >= 0", field="duration_s",
                                  value=duration_s, context={"operation": name})
        now = self.timer()
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                op = self._ops[name] = _Op(self.window)
            if op.count == 0:
                # The first call, even when record_value created the entry before it (first_start still nan).
                op.first_start = now - duration_s
            op.count += 1
            if error:
                op.errors += 1
            op.total += duration_s
            if duration_s < op.min:
                op.min = duration_s
            if duration_s > op.max:
                op.max = duration_s
            op.window.append(duration_s)
            op.last_end = now

    def record_value(self, name: str, key: str, value: float) -> None:
        """Record an extra figure of operation ``name`` (peak memory, bytes, ...): last, mean and max are kept."""
        if type(name) is not str or not name or type(key) is not str or not key:
            raise ValidationError("name and key must be non-empty str", field="name", value=(name, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError("value must be a finite number", field="value", value=value,
                                  context={"operation": name, "key": key})
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                op = self._ops[name] = _Op(self.window)
            figure = op.values.get(key)
            if figure is None:
                op.values[key] = [1, value, value, value]
            else:
                figure[0] += 1
                figure[1] = value
                figure[2] += value
                if value > figure[3]:
                    figure[3] = value

    def get_stats(self, name: str | None = None) -> dict[str, Any]:
        """Stats of ``name`` (zeros if never recorded), or of every operation as {name: stats}."""
        with self._lock:
            if name is not None:
                op = self._ops.get(name)
                snapshot = None if op is None else _snapshot(op)
            else:
                snapshots = {n: _snapshot(op) for n, op in self._ops.items()}
        if name is not None:
            return _stats(snapshot)
        return {n: _stats(s) for n, s in snapshots.items()}

    def names(self) -> list[str]:
        """Operation names recorded so far."""
        with self._lock:
            return list(self._ops)

    def reset(self, name: str | None = None) -> None:
        """Forget one operation, or all."""
        with self._lock:
            if name is None:
                self._ops.clear()
            else:
                self._ops.pop(name, None)

    def to_frame(self) -> pd.DataFrame:
        """A pandas DataFrame, one row per operation, columns as in ``get_stats`` (plus ``<key>_max`` values)."""
        import pandas as pd

        rows = {}
        for name, stats in self.get_stats().items():
            row = {k: stats[k] for k in STAT_KEYS}
            for key, figure in stats.get("values", {}).items():
                row[f"{key}_last"] = figure["last"]
                row[f"{key}_max"] = figure["max"]
            rows[name] = row
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=None if rows else list(STAT_KEYS))
        frame.index.name = "operation"
        return frame

    def __repr__(self) -> str:
        with self._lock:
            calls = sum(op.count for op in self._ops.values())
            return f"<PerformanceMonitor operations={len(self._ops)} calls={calls} window={self.window}>"

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{h}</th>" for h in ("operation", "count", "errors", "avg ms", "p50 ms", "p95 ms",
                                                  "p99 ms", "max ms", "per s"))
        rows = []
        for name, s in self.get_stats().items():
            cells = [html.escape(name), str(s["count"]), str(s["errors"])]
            cells += [f"{s[k] * 1000:.2f}" for k in ("avg_duration", "p50", "p95", "p99", "max_duration")]
            cells.append(f"{s['throughput']:.1f}")
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return f"<table><caption>PerformanceMonitor</caption><tr>{head}</tr>{''.join(rows)}</table>"


def _snapshot(op: _Op) -> tuple[Any, ...]:
    """Copy what the stats need, under the lock; the numpy work happens outside it."""
    values = {k: {"count": f[0], "last": f[1], "mean": f[2] / f[0], "max": f[3]} for k, f in op.values.items()}
    return (op.count, op.errors, op.total, op.min, op.max, list(op.window), op.first_start, op.last_end, values)


def _stats(snapshot: tuple[Any, ...] | None) -> dict[str, Any]:
    if snapshot is None or snapshot[0] == 0:
        out: dict[str, Any] = dict.fromkeys(STAT_KEYS, 0.0)
        out["count"] = out["errors"] = 0
        out["window"] = 0
        if snapshot is not None:
            out["values"] = snapshot[8]
        return out
    count, errors, total, low, high, window, first_start, last_end, values = snapshot
    import numpy as np

    p50, p90, p95, p99 = (float(x) for x in np.percentile(np.asarray(window, dtype=np.float64), PERCENTILES,
                                                         method="linear"))
    span = last_end - first_start
    out = {
        "count": count,
        "errors": errors,
        "error_rate": errors / count,
        "total_duration": total,
        "avg_duration": total / count,
        "min_duration": low,
        "max_duration": high,
        "p50": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        # Calls per second of wall time from the first call's start to the last call's end.
        "throughput": count / span if span > 0 else 0.0,
        "window": len(window),
    }
    if values:
        out["values"] = values
    return out


#: The process-wide monitor (cheap to build: a lock and an empty dict).
performance_monitor = PerformanceMonitor()

# One module-level stack of (timer object, start) per thread / asyncio task: a shared ``timed_operation``
# instance can be entered concurrently from many threads or tasks without their starts mixing.
_STARTS: contextvars.ContextVar[tuple[tuple[int, float], ...]] = contextvars.ContextVar("amulet_lab_timed", default=())


class timed_operation:  # noqa: N801 - used like a function: @timed_operation("x") / with timed_operation("x")
    """Time a block or a function (sync or async) into a monitor; an exception counts as an error, re-raised."""

    __slots__ = ("name", "_monitor")

    def __init__(self, name: str, monitor: PerformanceMonitor | None = None) -> None:
        if type(name) is not str or not name:
            raise ValidationError("timed_operation needs a non-empty name", field="name", value=name)
        self.name = name
        self._monitor = monitor

    @property
    def monitor(self) -> PerformanceMonitor:
        """The monitor recorded into (the global one unless given)."""
        return self._monitor if self._monitor is not None else performance_monitor

    def _finish(self, monitor: PerformanceMonitor, start: float, exc: BaseException | None) -> None:
        # Cancellation and Ctrl-C are not failures of the operation and would skew its timings: not recorded.
        if exc is None or isinstance(exc, Exception):
            monitor.record(self.name, max(0.0, monitor.timer() - start), error=exc is not None)

    def __enter__(self) -> timed_operation:
        _STARTS.set((*_STARTS.get(), (id(self), self.monitor.timer())))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = _STARTS.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == id(self):
                _STARTS.set(stack[:i] + stack[i + 1:])
                self._finish(self.monitor, stack[i][1], exc)
                return
        raise ValidationError(f"timed_operation({self.name!r}) exited without being entered", field="name",
                              value=self.name)

    async def __aenter__(self) -> timed_operation:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        """Decorate a sync or async function."""
        if not callable(fn):
            raise ValidationError("timed_operation decorates a callable", field="fn", value=fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                monitor = self.monitor
                start = monitor.timer()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._finish(monitor, start, exc)
                    raise
                self._finish(monitor, start, None)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            monitor = self.monitor
            start = monitor.timer()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(monitor, start, exc)
                raise
            self._finish(monitor, start, None)
            return result

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"timed_operation({self.name!r})"
