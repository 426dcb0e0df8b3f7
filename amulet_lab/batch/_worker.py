"""What runs where the photos are classified: one classifier per process (a Dask worker, a pool process or this one).

The model travels as its checkpoint path: each process loads it on its first task (or on ``load_worker_model``,
which the engine calls on every worker before the first task) and keeps it, so each worker loads it once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["classify_files", "load_worker_model", "prepare_worker", "worker_model_loads"]

_LOCK = threading.Lock()
_CLASSIFIERS: dict[tuple[str, int, tuple[float | None, float | None]], Any] = {}
_LOADS = 0


def load_worker_model(checkpoint: str, torch_threads: int = 1,
                      bands: tuple[float | None, float | None] | None = None) -> Any:
    """This process's classifier for ``checkpoint`` (loaded on the first call, then kept): no prediction cache
    (every photo of a run is new), ``torch_threads`` threads, one decode thread."""
    global _LOADS
    key = (os.fspath(checkpoint), int(torch_threads), tuple(bands or (None, None)))
    with _LOCK:
        clf = _CLASSIFIERS.get(key)
        if clf is None:
            from amulet_lab.model import AmuletClassifier

            clf = AmuletClassifier.from_checkpoint(key[0], cache=False, torch_threads=key[1], decode_workers=1,
                                                   bands=bands)
            _CLASSIFIERS[key] = clf
            _LOADS += 1
        return clf


def prepare_worker(checkpoint: str, torch_threads: int = 1,
                   bands: tuple[float | None, float | None] | None = None) -> str:
    """Load this process's classifier now (``Client.run`` calls it on every worker before the first task);
    returns the model's fingerprint."""
    return str(load_worker_model(checkpoint, torch_threads, bands).fingerprint)


def worker_model_loads() -> int:
    """How many times this process has loaded a model (1 per worker and checkpoint in a healthy run)."""
    return _LOADS


def classify_files(items: Sequence[tuple[str, str]], checkpoint: str, model: str, *, scene: bool = False,
                   top_k: int = 3, batch_size: int = 16, torch_threads: int = 1,
                   bands: tuple[float | None, float | None] | None = None) -> list[dict[str, Any]]:
    """The rows of ``items`` ((path, sha256) pairs): one per photo, or one per piece with ``scene``.

    A file that cannot be classified is an error row (its code and message), never an exception: the batch is
    predicted at once and, when one of its files fails, each file again on its own.
    """
    from amulet_lab.batch._rows import error_row, prediction_row, scene_rows

    clf = load_worker_model(checkpoint, torch_threads, bands)
    rows: list[dict[str, Any]] = []
    if scene:
        for path, sha in items:
            try:
                rows.extend(scene_rows(path, sha, clf.predict_scene(path, top_k=top_k), model))
            except Exception as exc:  # noqa: BLE001 - a bad file is a row
                rows.append(error_row(path, sha, model, exc, scene=True))
        return rows
    paths = [path for path, _ in items]
    try:
        preds: list[Any] = clf.predict_batch(paths, batch_size=batch_size, top_k=top_k)
    except Exception:  # noqa: BLE001 - one bad file: find it, answer the others
        preds = []
        for path in paths:
            try:
                preds.append(clf.predict(path, top_k=top_k))
            except Exception as exc:  # noqa: BLE001
                preds.append(exc)
    for (path, sha), pred in zip(items, preds):
        rows.append(error_row(path, sha, model, pred) if isinstance(pred, BaseException)
                    else prediction_row(path, sha, pred, model))
    return rows
