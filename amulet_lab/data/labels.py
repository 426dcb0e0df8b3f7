"""The six class labels of ``data/labels.json``: loaded and checked in one place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from amulet_lab.config import PROJECT_ROOT
from amulet_lab.errors import ValidationError

__all__ = ["Label", "load_labels", "DEFAULT_LABELS_PATH"]

#: The labels file shipped with the project.
DEFAULT_LABELS_PATH = PROJECT_ROOT / "data" / "labels.json"

_FIELDS = ("index", "key", "thai", "english")


@dataclasses.dataclass(frozen=True)
class Label:
    """One class: its position in the model's output, stable key, Thai and English names."""

    index: int
    key: str
    thai: str
    english: str


def load_labels(path: str | Path | None = None) -> list[Label]:
    """Read and validate a labels file (default ``data/labels.json``); sorted by index."""
    target = Path(path) if path is not None else DEFAULT_LABELS_PATH
    try:
        raw = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError(f"labels file not found: {target}", field="labels", value=str(target),
                              code="E_LABELS_MISSING") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"labels file {target} is not valid JSON: {exc}", field="labels", value=str(target),
                              code="E_LABELS_FORMAT") from exc
    if not isinstance(raw, list) or not raw:
        raise ValidationError(f"labels file {target} must hold a non-empty JSON list", field="labels",
                              value=str(target), code="E_LABELS_FORMAT")
    labels: list[Label] = []
    for position, entry in enumerate(raw):
        if not isinstance(entry, dict) or any(name not in entry for name in _FIELDS):
            raise ValidationError(f"labels file {target}: entry {position} needs the fields {', '.join(_FIELDS)}",
                                  field="labels", value=entry, code="E_LABELS_FORMAT")
        index, key = entry["index"], entry["key"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValidationError(f"labels file {target}: entry {position} has a non-integer index {index!r}",
                                  field="index", value=index, code="E_LABELS_FORMAT")
        if not isinstance(key, str) or not key or not key.replace("_", "").isalnum() or key.startswith("_"):
            raise ValidationError(f"labels file {target}: entry {position} has an invalid key {key!r} "
                                  "(letters, digits and inner underscores only)",
                                  field="key", value=key, code="E_LABELS_FORMAT")
        labels.append(Label(index, key, str(entry["thai"]), str(entry["english"])))
    labels.sort(key=lambda label: label.index)
    indices = [label.index for label in labels]
    if indices != list(range(len(labels))):
        raise ValidationError(f"labels file {target}: indices must be 0..{len(labels) - 1} without gaps, got {indices}",
                              field="index", value=indices, code="E_LABELS_INDEX")
    keys = [label.key for label in labels]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValidationError(f"labels file {target}: duplicate keys {duplicates}", field="key", value=duplicates,
                              code="E_LABELS_DUPLICATE")
    return labels
