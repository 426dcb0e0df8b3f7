"""The performance report: run ``03_benchmark`` then ``04_report`` with papermill, export HTML.

``run_report()`` is what ``amulet-lab report`` / ``make report`` / ``amulet-lab demo`` call;
``PerformanceReport`` is what ``04_report.ipynb`` shows (history, trends, regressions, machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amulet_lab.bench.compare import Comparison, compare
from amulet_lab.bench.history import History
from amulet_lab.config import PROJECT_ROOT, Settings
from amulet_lab.errors import ProcessingError, ValidationError
from amulet_lab.files import atomic_write_text

__all__ = [
    "NOTEBOOKS_DIR",
    "DEFAULT_PARAMETERS",
    "QUICK_PARAMETERS",
    "ReportResult",
    "PerformanceReport",
    "run_report",
    "kernel_name",
    "export_html",
    "frame_or_sentence",
    "LatestRun",
]

log = logging.getLogger("amulet_lab.bench")

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
#: Parameters of 03_benchmark for ``amulet-lab report`` (the notebook's own defaults match these).
DEFAULT_PARAMETERS: dict[str, Any] = {
    "scenarios": ["single_stream", "offline", "server", "cache", "memory"],
    "batch_sizes": [1, 8],
    "threads": 1,  # one torch thread: far steadier figures on a shared machine than torch's default
    "samples": 32,
    "min_duration_s": 1.0,
    "duration_s": 3.0,
    "seed": 0,
}
#: ``--quick``: the same scenarios, smaller.
QUICK_PARAMETERS: dict[str, Any] = {**DEFAULT_PARAMETERS, "batch_sizes": [4], "samples": 8, "min_duration_s": 0.3,
                                    "duration_s": 1.0}


def kernel_name() -> str:
    """``amulet-lab`` when that kernel is registered (``make venv`` does it), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "amulet-lab" if "amulet-lab" in specs else "python3"


@functools.lru_cache(maxsize=1)
def _sentence_frame_class() -> type:
    import pandas as pd

    class SentenceFrame(pd.DataFrame):
        """A DataFrame that, when it has no rows, shows a sentence instead of a table of headers only."""

        _metadata = ["sentence"]
        sentence: str = ""

        @property
        def _constructor(self) -> type:
            return SentenceFrame

        def _repr_html_(self) -> str | None:
            if self.empty and self.sentence:
                return f"<p><i>{html.escape(self.sentence)}</i></p>"
            return super()._repr_html_()

        def __repr__(self) -> str:
            return self.sentence if self.empty and self.sentence else super().__repr__()

    return SentenceFrame


def frame_or_sentence(frame: Any, sentence: str) -> Any:
    """``frame`` as a DataFrame that displays ``sentence`` (in HTML and as text) when it has no rows."""
    out = _sentence_frame_class()(frame)
    out.sentence = sentence
    return out


@dataclasses.dataclass
class LatestRun:
    """The latest run as one small table per scenario (its own metrics only, units beside the values)."""

    run_id: str | None
    tables: dict[str, list[tuple[str, float, str]]]

    @classmethod
    def from_records(cls, run_id: str | None, records: list[dict[str, Any]]) -> LatestRun:
        """Per scenario (and variant) of ``records``: its measured metrics, sorted by name; NaN/None left out."""
        from amulet_lab.bench.plots import unit_of

        tables: dict[str, list[tuple[str, float, str]]] = {}
        for r in records:
            key = r["scenario"] + (f"[{r['variant']}]" if r.get("variant") else "")
            rows = [(m, float(v), unit_of(m)) for m, v in sorted((r.get("metrics") or {}).items())
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
            tables[key] = rows
        return cls(run_id, tables)

    @staticmethod
    def _value(metric: str, value: float, unit: str) -> str:
        if unit == "share":
            return f"{value:.1%}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"

    def _repr_html_(self) -> str:
        if not self.tables:
            return "<p><i>No run in the history yet: run 03_benchmark (or amulet-lab report) first.</i></p>"
        cards = []
        for key, rows in self.tables.items():
            body = "".join(
                f"<tr><td style='text-align:left'>{html.escape(m)}</td>"
                f"<td style='text-align:right'>{html.escape(self._value(m, v, u))}</td>"
                f"<td style='text-align:left;color:#666'>{html.escape(u)}</td></tr>"
                for m, v, u in rows) or "<tr><td colspan='3'><i>no metrics recorded</i></td></tr>"
            cards.append(f"<div style='display:inline-block;vertical-align:top;margin:0 24px 16px 0'>"
                         f"<h4 style='margin:0 0 4px 0'>{html.escape(key)}</h4>"
                         f"<table><thead><tr><th>metric</th><th>value</th><th>unit</th></tr></thead>"
                         f"<tbody>{body}</tbody></table></div>")
        return f"<div>{''.join(cards)}</div>"

    def __repr__(self) -> str:
        if not self.tables:
            return "no run in the history yet"
        blocks = []
        for key, rows in self.tables.items():
            blocks.append("\n".join([key] + [f"  {m}: {self._value(m, v, u)} {u}".rstrip() for m, v, u in rows]))
        return "\n\n".join(blocks)


def export_html(notebook: str | Path, out: str | Path | None = None, *, exclude_input: bool = False) -> Path:
    """Export an executed notebook to HTML (nbconvert, ``lab`` template), written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    src = Path(notebook)
    if not src.is_file():
        raise ValidationError(f"notebook not found: {src}", field="notebook", value=str(src))
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = exclude_input
    exporter.exclude_input_prompt = exclude_input
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nbformat.read(src, as_version=4))
    return atomic_write_text(Path(out) if out else src.with_suffix(".html"), body)


def _execute(src: Path, dst: Path, parameters: Mapping[str, Any], *, kernel: str, progress: bool) -> Path:
    """Papermill ``src`` into ``dst``; the file appears only when the run finished (temp + replace)."""
    import papermill as pm

    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    try:
        try:
            pm.execute_notebook(
                str(src), str(tmp), parameters=dict(parameters), kernel_name=kernel, cwd=str(src.parent),
                progress_bar=progress, log_output=False,
            )
        except pm.PapermillExecutionError as exc:
            failed = dst.with_name(dst.stem + ".failed.ipynb")
            # Papermill writes the notebook as cells run; keep the executed copy when there is one.
            kept = f" (executed copy: {failed})" if tmp.exists() else ""
            if tmp.exists():
                os.replace(tmp, failed)
            raise ProcessingError(
                f"{src.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}{kept}",
                stage="report", code="E_REPORT_NOTEBOOK",
            ) from exc
        if not tmp.exists():
            raise ProcessingError(f"papermill wrote no notebook for {src.name}", stage="report", code="E_REPORT_NOTEBOOK")
        os.replace(tmp, dst)
    finally:
        # Whatever happened (a kernel that died, Ctrl-C), no temp notebook is left beside the reports.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dst


@dataclasses.dataclass
class ReportResult:
    """Where the report went and what it found."""

    out_dir: Path
    notebooks: list[Path]
    html: list[Path]
    history_path: Path
    records_before: int
    records_after: int
    runs: int
    latest_run_id: str | None
    comparison: Comparison
    seconds: float

    def summary(self) -> str:
        """A few lines for the terminal: what ran, where it is, what changed."""
        lines = [
            f"report written to {self.out_dir} in {self.seconds:.0f} s",
            *(f"  notebook: {p}" for p in self.notebooks),
            *(f"  html:     {p}" for p in self.html),
            f"history {self.history_path}: {self.records_after - self.records_before} record(s) appended "
            f"({self.records_after} in all, {self.runs} run(s))",
            self.comparison.to_text(),
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ReportResult(out_dir={str(self.out_dir)!r}, runs={self.runs}, regressions={len(self.comparison.regressions)})"


def run_report(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    parameters: Mapping[str, Any] | None = None,
    history_dir: str | Path | None = None,
    kernel: str | None = None,
    html: bool = True,
    progress: bool = True,
    settings: Settings | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
) -> ReportResult:
    """Run 03_benchmark (appending to the history) then 04_report into ``out_dir``, and export HTML."""
    from amulet_lab.config import get_settings

    settings = settings or get_settings()
    out = Path(out_dir) if out_dir else settings.reports_path
    hist_dir = Path(history_dir) if history_dir else out / "history"
    src_dir = Path(notebooks_dir)
    for name in ("03_benchmark.ipynb", "04_report.ipynb"):
        if not (src_dir / name).is_file():
            raise ValidationError(f"notebook {name} not found in {src_dir}", field="notebooks_dir", value=str(src_dir))
    out.mkdir(parents=True, exist_ok=True)
    params = {**(QUICK_PARAMETERS if quick else DEFAULT_PARAMETERS), **dict(parameters or {})}
    params["history_dir"] = str(hist_dir.resolve())
    params.setdefault("progress", False)  # nobody watches a papermill run; bars would only clutter the HTML
    kernel = kernel or kernel_name()
    before = len(History(hist_dir))
    start = time.perf_counter()
    bench_nb = _execute(src_dir / "03_benchmark.ipynb", out / "03_benchmark.ipynb", params, kernel=kernel, progress=progress)
    report_nb = _execute(src_dir / "04_report.ipynb", out / "04_report.ipynb", {"history_dir": params["history_dir"]},
                         kernel=kernel, progress=progress)
    pages = [export_html(bench_nb), export_html(report_nb, exclude_input=True)] if html else []
    history = History(hist_dir)
    return ReportResult(
        out_dir=out,
        notebooks=[bench_nb, report_nb],
        html=pages,
        history_path=history.path,
        records_before=before,
        records_after=len(history),
        runs=len(history.run_ids()),
        latest_run_id=history.latest_run_id(),
        comparison=compare(history),
        seconds=time.perf_counter() - start,
    )


class PerformanceReport:
    """The history of one machine as the report shows it: trends, regressions, latest run, machine."""

    def __init__(self, history: History | str | Path | None = None, *, machine_id: str | None = None,
                 settings: Settings | None = None) -> None:
        if history is None:
            history = History.from_settings(settings)
        self.history = history if isinstance(history, History) else History(history)
        latest = self.history.latest_run_id()
        if machine_id is None and latest is not None:
            machine_id = self.history.run(latest)[0]["machine_id"]
        self.machine_id = machine_id
        self.records = [r for r in self.history if machine_id is None or r["machine_id"] == machine_id]
        self.latest_run_id = self.history.latest_run_id(machine_id) if machine_id else None
        self.comparison = compare(self.records, self.latest_run_id) if self.latest_run_id else compare([])
        self.comparison.corrupt_lines = self.history.corrupt_lines

    @property
    def latest(self) -> list[dict[str, Any]]:
        """The latest run's records."""
        return [r for r in self.records if r["run_id"] == self.latest_run_id]

    def frame(self):  # -> pandas.DataFrame
        """This machine's history, one row per record and metric."""
        frame = self.history.to_frame()
        return frame[frame["machine_id"] == self.machine_id] if self.machine_id else frame

    def runs_frame(self):  # -> pandas.DataFrame
        """One row per run: id, time, commit, reference workload ms, scenarios."""
        import pandas as pd

        rows: dict[str, dict[str, Any]] = {}
        for r in self.records:
            row = rows.setdefault(r["run_id"], {"run_id": r["run_id"], "timestamp": r["timestamp"],
                                                "commit": str(r.get("commit", "unknown"))[:10],
                                                "reference_ms": (r.get("reference") or {}).get("ms"), "scenarios": []})
            row["scenarios"].append(r["scenario"] + (f"[{r['variant']}]" if r.get("variant") else ""))
        frame = pd.DataFrame(list(rows.values()), columns=["run_id", "timestamp", "commit", "reference_ms", "scenarios"])
        frame["scenarios"] = frame["scenarios"].map(", ".join)
        return frame

    def latest_tables(self) -> dict[str, Any]:
        """Per scenario of the latest run: a one-column metrics table."""
        import pandas as pd

        out = {}
        for r in self.latest:
            key = r["scenario"] + (f"[{r['variant']}]" if r.get("variant") else "")
            out[key] = pd.DataFrame({"value": r["metrics"]}).round(3)
        return out

    def latest_view(self) -> LatestRun:
        """The latest run as one small table per scenario (what the report shows)."""
        return LatestRun.from_records(self.latest_run_id, self.latest)

    def latest_frame(self):  # -> pandas.DataFrame
        """The latest run's metrics: one row per metric, one column per scenario (for code; NaN where a scenario
        does not measure a metric; the report shows ``latest_view()``)."""
        import pandas as pd

        tables = self.latest_tables()
        if not tables:
            return pd.DataFrame()
        return pd.concat({k: v["value"] for k, v in tables.items()}, axis=1)

    def machine_frame(self):  # -> pandas.DataFrame
        """The machine of the latest run, one row per field."""
        import pandas as pd

        machine = self.latest[0].get("machine", {}) if self.latest else {}
        return pd.DataFrame({"value": {k: str(v) for k, v in machine.items()}})

    def regressions_frame(self):  # -> pandas.DataFrame
        """The regressions (and improvements) of the latest run against the earlier runs."""
        frame = self.comparison.to_frame()
        changed = frame[frame["status"].isin(["regression", "improvement"])].reset_index(drop=True)
        if self.latest_run_id is None:
            sentence = "No run in the history yet, so nothing to compare."
        elif not any(r.status in ("regression", "improvement", "ok") for r in self.comparison.rows):
            sentence = "No regressions: the latest run has no earlier runs of the same workload to be compared with."
        else:
            sentence = "No regressions and no improvements: every metric of the latest run is within its usual range."
        return frame_or_sentence(changed, sentence)

    def trend_figure(self):  # -> matplotlib Figure
        """A panel per key metric: value per run with the IQR band; regressions in red."""
        from amulet_lab.bench.plots import trend_figure

        return trend_figure(self.frame(), regressions=self.comparison.regressions)

    def stage_figure(self):  # -> matplotlib Figure
        """Mean ms per stage of the latest run's scenarios."""
        from amulet_lab.bench.plots import stage_figure

        return stage_figure(self.latest)

    def facts(self) -> str:
        """Stable facts for the notebook's checked cell (no times, no counts that grow run by run)."""
        scenarios = sorted({r["scenario"] for r in self.latest})
        panels = sum(1 for ax in self.trend_figure().axes if ax.get_title() and ax.axison)
        return "\n".join([
            f"history readable: {'yes' if self.history.path.exists() else 'no file'}",
            f"corrupt lines skipped: {self.history.corrupt_lines}",
            f"scenarios in the latest run: {', '.join(scenarios) or 'none'}",
            f"trend panels: {panels}",
            f"machine fields shown: {len(self.machine_frame())}",
        ])

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Performance report</b> · machine <code>{self.machine_id}</code> · "
            f"{len(self.runs_frame())} run(s) · latest <code>{self.latest_run_id}</code> · "
            f"{len(self.comparison.regressions)} regression(s)</p>"
        )

    def __repr__(self) -> str:
        return f"PerformanceReport(machine_id={self.machine_id!r}, runs={len(self.runs_frame())}, latest={self.latest_run_id!r})"
