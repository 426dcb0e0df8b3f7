"""Metrics of class probabilities against targets: the JSON ``evaluate`` and the CLI write.

``metrics(probs, targets, keys)`` gives ``accuracy``, ``macro_f1``, ``top2_accuracy``, ``ece`` (expected
calibration error, 15 equal-width confidence bins), ``nll``, ``per_class`` (precision, recall, f1, support)
and ``confusion_matrix`` (rows: true class, columns: predicted). Training (validation metrics) and
evaluation both import it; it imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from amulet_lab.errors import ValidationError

__all__ = ["metrics", "expected_calibration_error"]


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    conf, pred = probs.max(1)
    correct = (pred == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(conf[inside].mean()))
    return ece


def metrics(probs: torch.Tensor, targets: Sequence[int] | torch.Tensor, keys: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, top-2, ECE, NLL, per-class figures and the confusion matrix."""
    y = torch.as_tensor(targets, dtype=torch.long)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or probs.shape[1] != len(keys):
        raise ValidationError(
            f"probs {tuple(probs.shape)} do not match {y.shape[0]} targets and {len(keys)} classes", field="probs"
        )
    if y.numel() == 0:
        raise ValidationError("no samples to evaluate", field="targets", code="E_EMPTY_DATASET")
    k = len(keys)
    pred = probs.argmax(1)
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(y.tolist(), pred.tolist()):
        cm[t, p] += 1
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, key in enumerate(keys):
        tp = int(cm[i, i])
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[key] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            f1s.append(f1)
    top2 = probs.topk(min(2, k), dim=1).indices
    return {
        "n": int(y.numel()),
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": float(sum(f1s) / len(f1s)) if f1s else 0.0,
        "top2_accuracy": float((top2 == y.unsqueeze(1)).any(1).float().mean()),
        "ece": expected_calibration_error(probs, y),
        "nll": float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(keys),
    }
