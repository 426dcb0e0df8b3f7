"""One small HTML table for notebook ``_repr_html_`` of stats objects (cache, memory monitor, profile report)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["html_table", "format_value"]


def format_value(key: str, value: Any) -> str:
    """A stats value as short text: rates as percentages, dicts inline, ``math.inf`` as "no bound"."""
    if isinstance(value, float) and key.endswith("rate"):
        return f"{value:.1%}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
        return "no bound"
    return str(value)


def html_table(rows: Mapping[str, Any] | Iterable[tuple[str, Any]], caption: str = "") -> str:
    """A two-column ``<table>`` (name, value) with an optional caption; everything is HTML-escaped."""
    pairs = rows.items() if isinstance(rows, Mapping) else rows
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td>{html.escape(v if isinstance(v, str) else format_value(str(k), v))}</td></tr>"
        for k, v in pairs)
    head = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{head}{body}</table>"
