"""The rows of a batch run: finding the photos, their hashes, the CSV columns, what an output already holds."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["COLUMNS", "SCENE_COLUMNS", "collect_images", "file_sha256", "prediction_row", "error_row", "scene_rows",
           "format_rows", "read_rows", "done_keys"]

#: One row per photo.
COLUMNS = ("path", "sha256", "label", "confidence", "band", "is_unknown", "top_k", "model", "error")
#: ``scene=True``: one row per piece found in the photo (``piece`` its index, ``box`` [x0, y0, x1, y1] as JSON).
SCENE_COLUMNS = ("path", "sha256", "piece", "box", "label", "confidence", "band", "is_unknown", "top_k", "model",
                 "error")

def _suffixes() -> frozenset[str]:
    from amulet_lab.data.dataset import IMAGE_SUFFIXES

    return frozenset(IMAGE_SUFFIXES)


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Every image under the folders (recursively), files and glob patterns given: absolute, sorted, each once.

    An image is a file whose suffix is one of ``data.IMAGE_SUFFIXES`` (JPEG, PNG, WebP, HEIC/HEIF, any case);
    a file named directly is taken whatever its suffix (a bad one becomes an error row). Hidden files and
    folders under a folder are skipped. A path or pattern that matches nothing raises ``ValidationError``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    suffixes = _suffixes()
    found: dict[str, Path] = {}
    for given in paths:
        text = str(given)
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))] if glob.has_magic(text) else [Path(text)]
        matches = [m for m in matches if m.exists()]
        if not matches:
            raise ValidationError(f"no such file or folder: {text}", field="paths", value=text, code="E_PATH_MISSING")
        for match in matches:
            if match.is_dir():
                for p in sorted(match.rglob("*")):
                    rel = p.relative_to(match).parts
                    if p.is_file() and p.suffix.lower() in suffixes and not any(s.startswith(".") for s in rel):
                        found.setdefault(str(p.resolve()), p.resolve())
            elif match.is_file() and (not glob.has_magic(text) or match.suffix.lower() in suffixes):
                found.setdefault(str(match.resolve()), match.resolve())
    return [found[k] for k in sorted(found)]


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes (``security.content_hash`` of the same bytes), read in 1 MiB pieces;
    "" when the file cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _top_k(prediction: Any) -> str:
    return json.dumps([[key, round(float(p), 6)] for key, _thai, p in prediction.top_k])


def prediction_row(path: str, sha256: str, prediction: Any, model: str) -> dict[str, Any]:
    """The row of one ``model.Prediction``."""
    return {"path": path, "sha256": sha256, "label": prediction.label,
            "confidence": f"{float(prediction.confidence):.6f}", "band": prediction.confidence_band,
            "is_unknown": str(bool(prediction.is_unknown)).lower(), "top_k": _top_k(prediction), "model": model,
            "error": ""}


def error_row(path: str, sha256: str, model: str, exc: BaseException, *, scene: bool = False) -> dict[str, Any]:
    """The row of a file that could not be classified: ``error`` is ``CODE: message``, the answer columns empty."""
    code = getattr(exc, "code", None) or ("E_UNREADABLE" if isinstance(exc, OSError) else "E_INTERNAL")
    message = " ".join(str(getattr(exc, "message", exc)).split())[:300]
    row = dict.fromkeys(SCENE_COLUMNS if scene else COLUMNS, "")
    row.update(path=path, sha256=sha256, model=model, error=f"{code}: {message}")
    return row


def scene_rows(path: str, sha256: str, scene: Any, model: str) -> list[dict[str, Any]]:
    """One row per piece of a ``model.scenes.ScenePrediction``; a photo with no piece gives one row with an empty
    ``piece`` (so that a rerun knows it was done)."""
    if not scene.pieces:
        row = dict.fromkeys(SCENE_COLUMNS, "")
        row.update(path=path, sha256=sha256, model=model)
        return [row]
    rows = []
    for i, piece in enumerate(scene.pieces):
        row = prediction_row(path, sha256, piece.prediction, model)
        row.update(piece=str(i), box=json.dumps([int(v) for v in piece.box]))
        rows.append({k: row[k] for k in SCENE_COLUMNS})
    return rows


def format_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, header: bool = False) -> list[str]:
    """CSV lines (no line ends) of ``rows`` in ``columns`` order, the header line first when asked."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().splitlines()


def read_rows(path: str | Path) -> tuple[list[str] | None, list[dict[str, str]]]:
    """(columns, rows) of an existing output CSV; (None, []) when there is none or it is empty."""
    target = Path(path)
    if not target.is_file() or target.stat().st_size == 0:
        return None, []
    with open(target, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def done_keys(rows: Iterable[dict[str, str]]) -> set[tuple[str, str, str]]:
    """(path, sha256, model) of every row that holds an answer or an error for a readable file."""
    return {(r["path"], r["sha256"], r["model"]) for r in rows if r.get("sha256")}
