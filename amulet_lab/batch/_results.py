"""Reading a batch run's CSV back: a typed pandas table and its summaries (per class, unknowns, most uncertain)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amulet_lab.batch._engine import BatchResult
from amulet_lab.errors import ValidationError

__all__ = ["BatchReport", "results_frame", "class_counts", "unknown_rows", "most_uncertain", "error_rows"]

#: What ``class_counts`` calls the rows that are not one of the known classes, and the files that failed.
UNKNOWN = "(unknown)"
ERROR = "(error)"


def _second(top: list) -> float:
    return float(top[1][1]) if len(top) > 1 else 0.0


def results_frame(out: str | Path) -> Any:
    """The rows of the output CSV ``out`` as a pandas DataFrame, typed: ``confidence`` float (NaN for an error row),
    ``is_unknown`` bool, ``top_k`` a list of [key, probability], ``piece`` an int and ``box`` a list (scene runs);
    added: ``name`` (the file name), ``ok`` (no error), ``uncertainty`` (1 for an unknown answer, else
    1 - confidence, as the Gallery ranks them) and ``margin`` (top-1 minus top-2 probability)."""
    import pandas as pd

    from amulet_lab.batch._rows import COLUMNS, SCENE_COLUMNS

    target = Path(out)
    if not target.is_file():
        raise ValidationError(f"no results at {target}", field="out", value=str(target), code="E_PATH_MISSING")
    frame = pd.read_csv(target, dtype=str, keep_default_na=False)
    if tuple(frame.columns) not in (COLUMNS, SCENE_COLUMNS):
        raise ValidationError(f"{target} is not a batch output: columns {list(frame.columns)}", field="out",
                              value=str(target), code="E_OUTPUT_COLUMNS")
    frame["confidence"] = pd.to_numeric(frame["confidence"].replace("", None), errors="coerce").astype(float)
    frame["is_unknown"] = frame["is_unknown"] == "true"
    frame["top_k"] = [json.loads(t) if t else [] for t in frame["top_k"]]
    if "piece" in frame:
        frame["piece"] = pd.to_numeric(frame["piece"].replace("", None), errors="coerce").astype("Int64")
        frame["box"] = [json.loads(b) if b else [] for b in frame["box"]]
    frame.insert(1, "name", [Path(p).name for p in frame["path"]])
    frame["ok"] = frame["error"] == ""
    answered = frame["ok"] & (frame["label"] != "")  # a scene photo with no piece has no answer
    frame["uncertainty"] = (1.0 - frame["confidence"]).where(~frame["is_unknown"], 1.0).where(answered)
    frame["margin"] = [float(t[0][1]) - _second(t) if t else float("nan") for t in frame["top_k"]]
    return frame


def class_counts(frame: Any) -> Any:
    """One row per answer: each class, ``(unknown)`` (not one of the known types) and ``(error)`` (files that
    could not be classified), with ``count``, ``share`` of all rows and ``mean_confidence``; most frequent first."""
    import pandas as pd

    answer = frame["label"].where(~frame["is_unknown"], UNKNOWN).where(frame["ok"], ERROR)
    answer = answer[answer != ""]  # a scene photo with no piece
    grouped = pd.DataFrame({"answer": answer, "confidence": frame.loc[answer.index, "confidence"]})
    table = grouped.groupby("answer").agg(count=("answer", "size"), mean_confidence=("confidence", "mean"))
    table["share"] = table["count"] / max(1, len(grouped))
    table = table.reset_index().sort_values(["count", "answer"], ascending=[False, True], ignore_index=True)
    return table[["answer", "count", "share", "mean_confidence"]]


_SHOWN = ["name", "label", "confidence", "band", "margin", "top_k", "path"]


def _shown(frame: Any) -> list[str]:
    return (["name", "piece"] + _SHOWN[1:]) if "piece" in frame else _SHOWN


def unknown_rows(frame: Any) -> Any:
    """The rows answered "not one of the six known types" (``label`` is then only the closest class), least
    confident first."""
    rows = frame[frame["ok"] & frame["is_unknown"]]
    return rows.sort_values(["confidence", "path"], ignore_index=True)[_shown(frame)]


def most_uncertain(frame: Any, n: int = 10) -> Any:
    """The ``n`` answered rows of a known class that most need a second look: highest ``uncertainty``
    (1 - confidence) first, the smaller ``margin`` between the two best classes breaking ties."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError("n must be an int >= 1", field="n", value=n)
    rows = frame[frame["ok"] & ~frame["is_unknown"] & frame["uncertainty"].notna()]
    rows = rows.sort_values(["uncertainty", "margin", "path"], ascending=[False, True, True], ignore_index=True)
    return rows.head(n)[_shown(frame) + ["uncertainty"]]


def error_rows(frame: Any) -> Any:
    """The files that could not be classified, with their coded error."""
    return frame[~frame["ok"]].sort_values("path", ignore_index=True)[["name", "error", "path"]]


class BatchReport:
    """A batch output read back (``frame``), with the run that wrote it when there was one (``result``)."""

    def __init__(self, out: str | Path, result: BatchResult | None = None) -> None:
        self.out = Path(out)
        self.result = result
        self.frame = results_frame(self.out)

    @classmethod
    def run(cls, paths: Sequence[str | Path] | str | Path | None, out: str | Path, *, settings: Any,
            checkpoint: str | Path | None = None, workers: int = 2, scheduler: str | None = None,
            scene: bool = False, progress: bool = True, **kwargs: Any) -> BatchReport:
        """``batch.classify`` then read the output back. ``paths`` None: the sample photos (data/samples);
        ``checkpoint`` None: ``settings.model_path`` (AMULET_MODEL_PATH) or the bundled model; the confidence bands
        of ``settings`` (read at the edge, the notebook, and passed here)."""
        from amulet_lab.batch._engine import classify
        from amulet_lab.config import PROJECT_ROOT
        from amulet_lab.model.classifier import default_checkpoint_path

        if paths is None or (not isinstance(paths, (str, Path)) and len(paths) == 0):
            paths = [PROJECT_ROOT / "data" / "samples"]
        ckpt = checkpoint or default_checkpoint_path(settings.model_path)
        result = classify(paths, out, checkpoint=ckpt, workers=workers, scheduler=scheduler, scene=scene,
                          progress=progress, bands=(settings.band_reliable, settings.band_verify), **kwargs)
        return cls(out, result)

    def counts(self) -> Any:
        """``class_counts`` of the table."""
        return class_counts(self.frame)

    def unknowns(self) -> Any:
        """``unknown_rows`` of the table."""
        return unknown_rows(self.frame)

    def most_uncertain(self, n: int = 10) -> Any:
        """``most_uncertain`` of the table."""
        return most_uncertain(self.frame, n)

    def errors(self) -> Any:
        """``error_rows`` of the table."""
        return error_rows(self.frame)

    def facts(self) -> str:
        """Stable facts about the table, in words (what a rerun that skips every photo prints too)."""
        f = self.frame
        photos = f["path"].nunique()
        once = "piece" in f or len(f) == photos
        counts = ", ".join(f"{r.answer} {r.count}" for r in self.counts().itertuples())
        return "\n".join([
            f"rows: {len(f)}, photos: {photos}, one row per photo: {once}",
            f"classified: {int(f['ok'].sum())}, errors: {int((~f['ok']).sum())}, "
            f"unknown: {int((f['ok'] & f['is_unknown']).sum())}, models: {f['model'].nunique()}",
            f"per answer: {counts}",
        ])

    def __repr__(self) -> str:
        return f"BatchReport(out={str(self.out)!r}, rows={len(self.frame)}, ran={self.result is not None})"
