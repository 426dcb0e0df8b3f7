"""The benchmark history: one JSON line per run and scenario in ``reports/history/runs.jsonl``.

JSON lines because a history only ever grows by appending, stays readable with ``grep`` and
``jq``, and one bad line (a hand edit, a merge) costs that line only: it is reported, counted and
skipped, never fatal. A run's records are appended in one ``atomic_append_lines`` swap (flock-serialised),
so a crash never tears a line and a reader never sees half a run.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from amulet_lab.errors import ValidationError
from amulet_lab.files import atomic_append_lines

__all__ = ["History", "HistoryWarning", "new_run_id", "utc_now", "baseline_key", "SCHEMA_VERSION", "REQUIRED_FIELDS",
           "FILE_NAME"]

log = logging.getLogger("amulet_lab.bench")

SCHEMA_VERSION = 1
FILE_NAME = "runs.jsonl"
#: Fields every record must have; a line without them is counted as corrupt.
REQUIRED_FIELDS = ("run_id", "timestamp", "machine_id", "scenario", "metrics")


class HistoryWarning(UserWarning):
    """A history line was corrupt or invalid and was skipped."""


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A sortable unique run id: UTC time to the second plus 6 random hex digits."""
    now = now or utc_now()
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def utc_now() -> _dt.datetime:
    """The current time in UTC (timezone-aware)."""
    return _dt.datetime.now(_dt.timezone.utc)


def baseline_key(record: Mapping[str, Any]) -> str:
    """What must match for one record to be a baseline of another: scenario, variant, params (with the torch
    threads and cache flag filled from the record's settings where older records lack them) and the name
    of the reference workload (figures normalised by another workload do not compare)."""
    params = dict(record.get("params") or {})
    settings = record.get("settings") or {}
    threads = settings.get("torch_threads", (record.get("machine") or {}).get("torch_threads"))
    params.setdefault("torch_threads", threads)
    params.setdefault("cache", settings.get("cache"))
    key = {"scenario": record.get("scenario"), "variant": record.get("variant", ""), "params": params,
           "reference": (record.get("reference") or {}).get("name")}
    return json.dumps(key, sort_keys=True, default=str)


def _problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {missing}"
    if not isinstance(record["metrics"], dict):
        return "metrics is not an object"
    return None


class History:
    """A JSON-lines history file; ``path`` may be the file or its folder (then ``runs.jsonl`` inside)."""

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise ValidationError("history path must be a non-empty path", field="path", value=path)
        p = Path(path)
        self.path = p if p.suffix == ".jsonl" else p / FILE_NAME
        self.records: list[dict[str, Any]] = []
        self.corrupt_lines = 0
        self.problems: list[str] = []
        self.reload()

    @classmethod
    def from_settings(cls, settings: Any = None) -> History:
        """The history under ``settings.reports_path / "history"``."""
        from amulet_lab.config import get_settings

        settings = settings or get_settings()
        return cls(settings.reports_path / "history")

    def reload(self) -> History:
        """Read the file again; corrupt or invalid lines are counted, warned about and skipped."""
        self.records, self.problems = [], []
        if not self.path.exists():
            self.corrupt_lines = 0
            return self
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self.problems.append(f"{self.path.name}:{lineno}: not valid JSON ({exc.msg})")
                continue
            problem = _problem(record)
            if problem:
                self.problems.append(f"{self.path.name}:{lineno}: {problem}")
                continue
            self.records.append(record)
        self.corrupt_lines = len(self.problems)
        if self.problems:
            text = f"{self.corrupt_lines} corrupt line(s) skipped in {self.path}: " + "; ".join(self.problems[:3])
            log.warning(text)
            warnings.warn(text, HistoryWarning, stacklevel=2)
        return self

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and append one record (atomically); returns the stored record."""
        return self.extend([record])[0]

    def extend(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Validate every record, then append them all in one atomic swap (all or none land)."""
        stored, lines = [], []
        for record in records:
            row = {"schema": SCHEMA_VERSION, **dict(record)}
            problem = _problem(row)
            if problem:
                raise ValidationError(f"cannot append history record: {problem}", field="record", value=sorted(row))
            try:
                lines.append(json.dumps(row, sort_keys=True, allow_nan=False, ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"history record is not JSON-ready: {exc}", field="record") from exc
            stored.append(row)
        if lines:
            atomic_append_lines(self.path, lines)
            self.records.extend(stored)
        return stored

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def run_ids(self, machine_id: str | None = None) -> list[str]:
        """Run ids in order of first appearance (oldest first), optionally for one machine."""
        seen: dict[str, None] = {}
        for r in self.records:
            if machine_id is None or r["machine_id"] == machine_id:
                seen.setdefault(r["run_id"], None)
        return list(seen)

    def latest_run_id(self, machine_id: str | None = None) -> str | None:
        """The most recent run's id (by timestamp, then order), or None for an empty history."""
        rows = [r for r in self.records if machine_id is None or r["machine_id"] == machine_id]
        if not rows:
            return None
        last = max(enumerate(rows), key=lambda ir: (str(ir[1]["timestamp"]), ir[0]))
        return str(last[1]["run_id"])

    def run(self, run_id: str) -> list[dict[str, Any]]:
        """The records of one run."""
        return [r for r in self.records if r["run_id"] == run_id]

    def to_frame(self):  # -> pandas.DataFrame
        """One row per record and metric: run_id, timestamp, machine_id, scenario, variant, metric, value, reference_ms,
        baseline_key (what ``compare`` matches baselines on)."""
        import pandas as pd

        rows = []
        for r in self.records:
            ref = (r.get("reference") or {}).get("ms")
            for metric, value in r["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append(
                        {
                            "run_id": r["run_id"],
                            "timestamp": r["timestamp"],
                            "machine_id": r["machine_id"],
                            "commit": r.get("commit", "unknown"),
                            "scenario": r["scenario"],
                            "variant": r.get("variant", ""),
                            "metric": metric,
                            "value": float(value),
                            "reference_ms": ref,
                            "baseline_key": baseline_key(r),
                        }
                    )
        columns = ["run_id", "timestamp", "machine_id", "commit", "scenario", "variant", "metric", "value", "reference_ms",
                   "baseline_key"]
        return pd.DataFrame(rows, columns=columns)

    def __repr__(self) -> str:
        return (
            f"History({str(self.path)!r}, records={len(self.records)}, runs={len(self.run_ids())}, "
            f"corrupt_lines={self.corrupt_lines})"
        )
