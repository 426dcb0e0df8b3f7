"""``%%amulet_profile``: a cell's wall time, peak RSS growth and image-cache hit-rate change, as a small table.

Load with ``%load_ext amulet_lab``. The report is displayed and also kept in ``_amulet_profile``.
"""

from __future__ import annotations

import dataclasses
import html
import time
from typing import Any

from amulet_lab.memory._sampling import MB, RssSampler

__all__ = ["ProfileReport", "register", "amulet_profile"]


@dataclasses.dataclass(frozen=True)
class ProfileReport:
    """What one profiled cell cost: wall time, RSS growth (peak and end), image-cache hit rate before/after."""

    label: str
    wall_s: float
    peak_rss_delta_mb: float
    rss_delta_mb: float
    samples: int
    cache_hit_rate_before: float | None
    cache_hit_rate_after: float | None
    succeeded: bool

    @property
    def cache_hit_rate_change(self) -> float | None:
        """Hit rate after minus before (None when no image cache is available)."""
        if self.cache_hit_rate_before is None or self.cache_hit_rate_after is None:
            return None
        return self.cache_hit_rate_after - self.cache_hit_rate_before

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) pairs, formatted."""
        change = self.cache_hit_rate_change
        return [
            ("wall time", f"{self.wall_s:.3f} s"),
            ("peak RSS delta", f"{self.peak_rss_delta_mb:.1f} MB"),
            ("RSS delta at end", f"{self.rss_delta_mb:+.1f} MB"),
            ("image-cache hit rate", "n/a" if change is None else
             f"{self.cache_hit_rate_before:.1%} -> {self.cache_hit_rate_after:.1%} ({change:+.1%})"),
            ("cell", "ok" if self.succeeded else "raised"),
        ]

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["figure", "value"]).set_index("figure")

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in self.rows())
        caption = html.escape(f"amulet_profile {self.label}".strip())
        return f"<table><caption>{caption}</caption>{body}</table>"

    def __repr__(self) -> str:
        return "ProfileReport(" + ", ".join(f"{k}={v}" for k, v in self.rows()) + ")"


def _image_cache_hit_rate() -> float | None:
    """The process image cache's hit rate, or None when the cache module is not available."""
    try:
        from amulet_lab.cache import get_image_cache
    except ImportError:
        return None
    return float(get_image_cache().get_stats()["hit_rate"])


def amulet_profile(line: str, cell: str, *, shell: Any, interval_s: float = 0.01) -> ProfileReport:
    """Run ``cell`` in ``shell`` sampling RSS every ``interval_s``; display and return the report.

    The report is shown even when the cell fails; the cell's error is then raised again, so the cell
    counts as failed.
    """
    from IPython.display import display

    before = _image_cache_hit_rate()
    sampler = RssSampler(interval_s)
    start = time.perf_counter()
    with sampler:
        result = shell.run_cell(cell)
    wall = time.perf_counter() - start
    report = ProfileReport(
        label=line.strip(),
        wall_s=wall,
        peak_rss_delta_mb=sampler.peak_delta_bytes / MB,
        rss_delta_mb=sampler.delta_bytes / MB,
        samples=sampler.samples,
        cache_hit_rate_before=before,
        cache_hit_rate_after=_image_cache_hit_rate(),
        succeeded=bool(result.success),
    )
    shell.user_ns["_amulet_profile"] = report
    display(report)
    # Re-raise the cell's error so the cell counts as failed (Run All and papermill stop on it).
    result.raise_error()
    return report


def register(ipython: Any) -> None:
    """Register ``%%amulet_profile [label]`` with an IPython shell."""

    def magic(line: str, cell: str) -> None:
        amulet_profile(line, cell, shell=ipython)

    magic.__doc__ = "%%amulet_profile [label]: wall time, peak RSS delta and image-cache hit-rate change of a cell."
    ipython.register_magic_function(magic, magic_kind="cell", magic_name="amulet_profile")
