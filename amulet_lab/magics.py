"""``%%amulet_profile``: a cell's wall time, peak RSS growth, cache hit rate (image and prediction caches) and its change, as a table.

Load with ``%load_ext amulet_lab``. The report is displayed and also kept in ``_amulet_profile``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from amulet_lab.display import html_table
from amulet_lab.errors import ProcessingError
from amulet_lab.memory._sampling import MB, RssSampler

__all__ = ["ProfileReport", "ProfiledCellError", "register", "amulet_profile"]


@dataclasses.dataclass(frozen=True)
class ProfileReport:
    """What one profiled cell cost: wall time, RSS growth (peak and end), and its cache hits and misses."""

    label: str
    wall_s: float
    peak_rss_delta_mb: float
    rss_delta_mb: float
    samples: int
    cache_hit_rate_before: float | None  # the cache's lifetime rate before the cell (None: no cache)
    cache_hit_rate_after: float | None
    succeeded: bool
    cache_hits: int | None = None  # lookups during the cell only (None: no cache existed)
    cache_misses: int | None = None

    @property
    def cache_hit_rate(self) -> float | None:
        """The cell's own hit rate: hits / (hits + misses) during the cell (None: no cache or no lookups)."""
        if self.cache_hits is None or self.cache_misses is None or not self.cache_hits + self.cache_misses:
            return None
        return self.cache_hits / (self.cache_hits + self.cache_misses)

    @property
    def cache_hit_rate_change(self) -> float | None:
        """Lifetime hit rate after minus before (None when no cache is available)."""
        if self.cache_hit_rate_before is None or self.cache_hit_rate_after is None:
            return None
        return self.cache_hit_rate_after - self.cache_hit_rate_before

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) pairs, formatted."""
        if self.cache_hits is None or self.cache_misses is None:
            cache = "n/a (no cache)"
        elif self.cache_hit_rate is None:
            cache = "no lookups"
        else:
            cache = f"{self.cache_hit_rate:.1%} ({self.cache_hits} hits, {self.cache_misses} misses)"
        change = self.cache_hit_rate_change
        if self.cache_hit_rate_after is None:
            lifetime = "n/a (no cache)"
        elif change is None:
            lifetime = f"{self.cache_hit_rate_after:.1%} (cache created in the cell)"
        else:
            lifetime = (f"{self.cache_hit_rate_before:.1%} -> {self.cache_hit_rate_after:.1%} "
                        f"({change * 100:+.1f} pts)")
        return [
            ("wall time", f"{self.wall_s:.3f} s"),
            ("peak RSS delta", f"{self.peak_rss_delta_mb:.1f} MB"),
            ("RSS delta at end", f"{self.rss_delta_mb:+.1f} MB"),
            ("cache hit rate", cache),
            ("cache hit rate change", lifetime),
            ("cell", "ok" if self.succeeded else "raised"),
        ]

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["figure", "value"]).set_index("figure")

    def _repr_html_(self) -> str:
        return html_table(self.rows(), f"amulet_profile {self.label}".strip())

    def __repr__(self) -> str:
        return "ProfileReport(" + ", ".join(f"{k}={v}" for k, v in self.rows()) + ")"


class ProfiledCellError(ProcessingError):
    """The profiled cell raised; IPython already showed its traceback, so this one renders as one line."""

    def _render_traceback_(self) -> list[str]:
        # IPython's hook for custom tracebacks: without it the cell's traceback would be printed twice.
        return [self.message]


def _cache_counts() -> tuple[int, int, float] | None:
    """(hits, misses, hit_rate) summed over the process's caches (the image cache, every prediction cache), or
    None when there is none (never creates one, never imports the model)."""
    import sys

    from amulet_lab.cache import peek_image_cache

    caches: list[Any] = [c for c in (peek_image_cache(),) if c is not None]
    answers = sys.modules.get("amulet_lab.model.answers")
    if answers is not None:
        caches += answers.live_prediction_caches()
    if not caches:
        return None
    stats = [c.get_stats() for c in caches]
    hits, misses = sum(int(s["hits"]) for s in stats), sum(int(s["misses"]) for s in stats)
    return hits, misses, hits / (hits + misses) if hits + misses else 0.0


def amulet_profile(line: str, cell: str, *, shell: Any, interval_s: float = 0.01) -> ProfileReport:
    """Run ``cell`` in ``shell`` sampling RSS every ``interval_s``; display and return the report.

    The report is shown even when the cell fails; then ``ProfiledCellError`` (chained from the cell's
    error, rendered as one line because the traceback is already shown) is raised, so the cell counts as failed.
    """
    from IPython.display import display

    before = _cache_counts()
    sampler = RssSampler(interval_s)
    start = time.perf_counter()
    with sampler:
        result = shell.run_cell(cell)
    wall = time.perf_counter() - start
    after = _cache_counts()
    # A cache created inside the cell started from zero.
    base = before or (0, 0, 0.0)
    report = ProfileReport(
        label=line.strip(),
        wall_s=wall,
        peak_rss_delta_mb=sampler.peak_delta_bytes / MB,
        rss_delta_mb=sampler.delta_bytes / MB,
        samples=sampler.samples,
        cache_hit_rate_before=None if before is None else before[2],
        cache_hit_rate_after=None if after is None else after[2],
        succeeded=bool(result.success),
        cache_hits=None if after is None else max(0, after[0] - base[0]),  # max: the cell may reset the stats
        cache_misses=None if after is None else max(0, after[1] - base[1]),
    )
    shell.user_ns["_amulet_profile"] = report
    display(report)
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        # Raised so the cell counts as failed (Run All and papermill stop on it).
        raise ProfiledCellError(f"the profiled cell raised {type(error).__name__}: {error} (traceback above)",
                                code="E_CELL_FAILED",
                                stage="amulet_profile", context={"label": report.label}) from error
    return report


def register(ipython: Any) -> None:
    """Register ``%%amulet_profile [label]`` with an IPython shell."""

    def magic(line: str, cell: str) -> None:
        amulet_profile(line, cell, shell=ipython)

    magic.__doc__ = ("%%amulet_profile [label]: wall time, peak RSS delta, the cell's image-cache hit rate and "
                     "the change of the cache's hit rate.")
    ipython.register_magic_function(magic, magic_kind="cell", magic_name="amulet_profile")
