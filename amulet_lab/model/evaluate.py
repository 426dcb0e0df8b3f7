"""Metrics of a classifier on labelled data, and stratified k-fold cross-validation of the recipe.

``metrics`` and ``expected_calibration_error`` live in ``amulet_lab.model.metrics`` (training uses them
too) and are re-exported here. ``pair_accuracy`` combines the two sides of each piece (mean of
log-probabilities) where samples carry a ``group``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from amulet_lab.errors import ValidationError
from amulet_lab.model.metrics import expected_calibration_error, metrics

__all__ = ["metrics", "pair_accuracy", "evaluate", "cross_validate", "leave_one_class_out", "format_metrics",
           "expected_calibration_error"]


def pair_accuracy(probs: torch.Tensor, targets: Sequence[int], groups: Sequence[str | None]) -> dict[str, Any] | None:
    """Accuracy over pieces with more than one photo (sides combined by mean log-probability), or None."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        if g is not None:
            members[g].append(i)
    pairs = {g: idx for g, idx in members.items() if len(idx) >= 2}
    if not pairs:
        return None
    from amulet_lab.model.prediction import combine_sides

    correct = 0
    for idx in pairs.values():
        correct += int(int(combine_sides(probs[idx]).argmax()) == int(targets[idx[0]]))
    return {"pairs": len(pairs), "pair_accuracy": correct / len(pairs)}


def _as_classifier(model: Any, limits: Any = None) -> Any:
    from amulet_lab.model.classifier import AmuletClassifier

    if isinstance(model, AmuletClassifier):
        return model
    return AmuletClassifier.from_checkpoint(model, limits=limits, cache=False)


def evaluate(model: Any, data: Any, *, split: str = "all", limits: Any = None, batch_size: int = 32) -> dict[str, Any]:
    """Metrics of a classifier (or checkpoint path) on a dataset folder, ``DatasetSplits`` or list of Samples.

    ``split`` picks ``train``/``val``/``test``/``all`` of a dataset (``all``: every sample; for a folder
    with train/ val/ use ``val`` to score held-out data only).
    """
    from amulet_lab.data import DatasetSplits, load_dataset

    clf = _as_classifier(model, limits)
    if isinstance(data, (str, Path)):
        data = load_dataset(data, val_fraction=0.0)
    if isinstance(data, DatasetSplits):
        if split not in ("train", "val", "test", "all"):
            raise ValidationError("split must be train, val, test or all", field="split", value=split)
        samples = data.all if split == "all" else getattr(data, split)
    else:
        samples = list(data)
    if not samples:
        raise ValidationError(f"no samples in split {split!r}", field="split", value=split, code="E_EMPTY_DATASET")
    keys = [lab.key for lab in clf.labels]
    start = time.perf_counter()
    preds = clf.predict_batch([s.path for s in samples], batch_size=batch_size, top_k=len(keys))
    probs = torch.tensor([[p.probabilities[k] for k in keys] for p in preds])
    targets = [s.label for s in samples]
    out = metrics(probs, targets, keys)
    pairs = pair_accuracy(probs, targets, [s.group for s in samples])
    if pairs is not None:
        out.update(pairs)
    out["unknown_rate"] = sum(p.is_unknown for p in preds) / len(preds)
    out["seconds"] = time.perf_counter() - start
    return out


def cross_validate(
    samples: Sequence[Any], num_classes: int, keys: Sequence[str], *, k: int = 5, seed: int = 0,
    config: Any = None, progress: bool = True, on_fold: Callable[[int, int], None] | None = None,
    keep_predictions: bool = False, recomposed: bool = False,
) -> dict[str, Any]:
    """Stratified k-fold CV of the training recipe: per fold train on k-1 parts, score the held-out part.

    The held-out fold is scored by a model trained without it. Within the training part, a model with a
    CNN uses an inner stratified split (a fifth) for early stopping and calibration, as ``train`` does
    with a validation split; a features-only model trains on the whole part and calibrates on
    out-of-fold predictions (see ``train.fit``), as it does when given no validation split.

    Besides accuracy, macro-F1, top-2, ECE and NLL (per fold, then pooled), out of fold: the share of real
    photos each fold's unknown rule calls unknown (``false_unknown_rate``), the share of 120 generated
    non-amulets it catches (``probe_caught_rate``, mean over folds), and the accuracy and coverage of the
    "reliable" band with each fold's own bands (``reliable_accuracy``, ``reliable_coverage``).

    With ``recomposed``, each held-out photo is also scored re-composited on a page, wood and cloth
    (``data.recomposite``, seeded by its file name): ``recomposed_accuracy`` (mean over folds, with its std)
    and ``recomposed_false_unknown_rate``, the pieces as ``predict_scene`` cuts them from phone photos.

    ``on_fold(done, k)`` is called after each fold (a progress bar's feed). ``keep_predictions=True`` adds
    ``predictions``: per held-out photo, in fold order, its ``path``, ``target`` and ``predicted`` keys,
    ``confidence`` (top probability), ``unknown`` and ``fold`` (for reliability diagrams and the misclassified).
    """
    from dataclasses import replace

    from amulet_lab.data import stratified_kfold
    from amulet_lab.images import PreprocessSpec
    from amulet_lab.images import to_uint8_batch
    from amulet_lab.model.arch import ARCHITECTURES
    from amulet_lab.model.classifier import DEFAULT_BANDS
    from amulet_lab.model.train import TrainConfig, fit, predict_outputs
    from amulet_lab.model.unknown import make_probes

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValidationError("k must be an int >= 2", field="k", value=k)
    if on_fold is not None and not callable(on_fold):
        raise ValidationError("on_fold must be callable", field="on_fold", value=type(on_fold).__name__)
    cfg = config or TrainConfig()
    folds = stratified_kfold(list(samples), k, seed)
    results = []
    all_probs, all_targets, all_unknown, all_reliable, caught = [], [], [], [], []
    kept: list[dict[str, Any]] = []
    for i, (train_part, test_part) in enumerate(folds):
        if ARCHITECTURES[cfg.arch][0] is not None:  # a CNN: early stopping and calibration on an inner split
            fit_part, val_part = stratified_kfold(train_part, 5, seed + 100 + i)[0]
        else:
            fit_part, val_part = train_part, []
        fold_cfg = replace(cfg, seed=cfg.seed + i)
        res = fit([s.path for s in fit_part], [s.label for s in fit_part], [s.path for s in val_part],
                  [s.label for s in val_part], num_classes, fold_cfg, train_groups=[s.group for s in fit_part],
                  progress=progress)
        spec = PreprocessSpec(fold_cfg.img_size)
        x = spec.to_input(to_uint8_batch([s.path for s in test_part], spec.size))
        logits, distance = predict_outputs(res.model, x)
        probs = torch.softmax(logits / res.temperature, 1)
        unknown = res.unknown(probs, distance)
        all_unknown.append(unknown)
        reliable = (res.bands or {}).get("reliable", DEFAULT_BANDS[0])
        all_reliable.append(probs.max(1).values >= reliable)
        probes = torch.from_numpy(make_probes(120, spec.size, 12345)).permute(0, 3, 1, 2).contiguous()
        pl, pd = predict_outputs(res.model, spec.to_input(probes))
        caught.append(float(res.unknown(torch.softmax(pl / res.temperature, 1), pd).float().mean()))
        m = metrics(probs, [s.label for s in test_part], keys)
        m["train_seconds"] = res.seconds
        if recomposed:
            m.update(_recomposed_scores(res, spec, test_part))
        results.append(m)
        all_probs.append(probs)
        all_targets += [s.label for s in test_part]
        if keep_predictions:
            conf, pred = probs.max(1)
            kept += [{"path": str(s.path), "target": keys[s.label], "predicted": keys[int(p)], "confidence": float(c),
                      "unknown": bool(u), "fold": i} for s, p, c, u in zip(test_part, pred, conf, unknown)]
        if on_fold is not None:
            on_fold(i + 1, k)
    summary: dict[str, Any] = {"k": k, "folds": results}
    for name in ("accuracy", "macro_f1", "top2_accuracy", "ece", "nll"):
        values = [r[name] for r in results]
        summary[name] = statistics.fmean(values)
        summary[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    pooled_probs = torch.cat(all_probs)
    pooled = metrics(pooled_probs, all_targets, keys)
    summary["pooled"] = {k2: pooled[k2] for k2 in ("accuracy", "macro_f1", "top2_accuracy", "ece", "confusion_matrix", "per_class")}
    correct = pooled_probs.argmax(1) == torch.tensor(all_targets)
    band = torch.cat(all_reliable)
    summary["false_unknown_rate"] = float(torch.cat(all_unknown).float().mean())
    summary["probe_caught_rate"] = statistics.fmean(caught)
    summary["reliable_coverage"] = float(band.float().mean())
    summary["reliable_accuracy"] = float(correct[band].float().mean()) if bool(band.any()) else float("nan")
    if recomposed:
        values = [r["recomposed_accuracy"] for r in results]
        summary["recomposed_accuracy"] = statistics.fmean(values)
        summary["recomposed_accuracy_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary["recomposed_false_unknown_rate"] = statistics.fmean(r["recomposed_false_unknown_rate"] for r in results)
    if keep_predictions:
        summary["predictions"] = kept
    return summary


def leave_one_class_out(samples: Sequence[Any], keys: Sequence[str], *, config: Any = None,
                        progress: bool = True) -> dict[str, Any]:
    """How often an amulet of a kind the model never saw is called unknown: per class, train on the others.

    For each class, the recipe is trained on the photos of the other classes (labels renumbered), then shown
    every photo of the left-out class, as it is (a crop on red) and re-composited on a page, wood and cloth
    (the pieces ``predict_scene`` cuts from phone photos). ``unknown_rate`` is the share of those crops the
    model's unknown rule flags (mean over classes, ``per_class`` beside it); ``red_unknown_rate`` and
    ``recomposed_unknown_rate`` split it.
    """
    from amulet_lab.images import PreprocessSpec, decode
    from amulet_lab.model.train import TrainConfig, fit

    cfg = config or TrainConfig()
    if len(keys) < 3:
        raise ValidationError("leave-one-class-out needs at least 3 classes", field="keys", value=len(keys),
                              code="E_TOO_FEW_CLASSES")
    per_class: dict[str, dict[str, float]] = {}
    for c, key in enumerate(keys):
        kept = [s for s in samples if s.label != c]
        left = [s for s in samples if s.label == c]
        if not left:
            continue
        renumber = {old: new for new, old in enumerate(k for k in range(len(keys)) if k != c)}
        res = fit([s.path for s in kept], [renumber[s.label] for s in kept], [], [], len(keys) - 1, cfg,
                  train_groups=[s.group for s in kept], progress=progress)
        spec = PreprocessSpec(cfg.img_size)
        red = [decode(s.path) for s in left]
        recomposed = [crop for image, s in zip(red, left) for crop in _eval_recompositions(image, s.path)]
        rates = {}
        for name, crops in (("red", red), ("recomposed", recomposed)):
            probs, unknown = _scored(res, spec, crops)
            rates[name] = float(unknown.float().mean())
        per_class[key] = {"red_unknown_rate": rates["red"], "recomposed_unknown_rate": rates["recomposed"],
                          "unknown_rate": (rates["red"] * len(red) + rates["recomposed"] * len(recomposed))
                          / (len(red) + len(recomposed)), "photos": len(left)}
    if not per_class:
        raise ValidationError("no class has photos to leave out", field="samples", value=len(samples),
                              code="E_TOO_FEW_CLASSES")
    summary: dict[str, Any] = {"per_class": per_class}
    for name in ("unknown_rate", "red_unknown_rate", "recomposed_unknown_rate"):
        summary[name] = statistics.fmean(v[name] for v in per_class.values())
    return summary


def _eval_recompositions(image: Any, path: Any) -> list[Any]:
    """``image`` re-composited on each of ``EVAL_BACKGROUNDS``, seeded by its file name (the same in every fold)."""
    import zlib

    from amulet_lab.data.recomposite import EVAL_BACKGROUNDS, recomposite

    base = zlib.crc32(Path(path).name.encode("utf-8"))
    return [recomposite(image, seed=base * 4 + j, background=bg) for j, bg in enumerate(EVAL_BACKGROUNDS)]


def _scored(res: Any, spec: Any, crops: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained fold's calibrated probabilities and unknown decisions on ``crops``."""
    from amulet_lab.images import to_uint8_batch
    from amulet_lab.model.train import predict_outputs

    logits, distance = predict_outputs(res.model, spec.to_input(to_uint8_batch(crops, spec.size)))
    probs = torch.softmax(logits / res.temperature, 1)
    return probs, res.unknown(probs, distance)


def _recomposed_scores(res: Any, spec: Any, test_part: Sequence[Any]) -> dict[str, float]:
    """Accuracy and unknown rate of a fold's model on its held-out photos re-composited on each EVAL_BACKGROUNDS."""
    from amulet_lab.images import decode

    crops, targets = [], []
    for s in test_part:
        made = _eval_recompositions(decode(s.path), s.path)
        crops += made
        targets += [s.label] * len(made)
    probs, unknown = _scored(res, spec, crops)
    right = probs.argmax(1) == torch.tensor(targets)
    return {"recomposed_accuracy": float(right.float().mean()),
            "recomposed_false_unknown_rate": float(unknown.float().mean())}


def format_metrics(m: dict[str, Any]) -> str:
    """A short plain-text report of ``metrics``/``evaluate``/``cross_validate`` output."""
    lines = []
    for name in ("n", "accuracy", "macro_f1", "top2_accuracy", "ece", "nll", "pair_accuracy", "unknown_rate",
                 "false_unknown_rate", "probe_caught_rate", "reliable_accuracy", "reliable_coverage",
                 "recomposed_accuracy", "recomposed_false_unknown_rate"):
        if name in m:
            value = m[name]
            std = m.get(f"{name}_std")
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"{name:<16} {text}" + (f" ± {std:.4f}" if std is not None else ""))
    per_class = m.get("per_class") or m.get("pooled", {}).get("per_class")
    if per_class:
        lines.append(f"{'class':<32} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>4}")
        for key, row in per_class.items():
            lines.append(f"{key:<32} {row['precision']:6.3f} {row['recall']:6.3f} {row['f1']:6.3f} {row['support']:4d}")
    cm = m.get("confusion_matrix") or m.get("pooled", {}).get("confusion_matrix")
    if cm:
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines += ["  " + " ".join(f"{v:3d}" for v in row) for row in cm]
    if not math.isfinite(m.get("accuracy", 0.0)):
        lines.append("(accuracy is not finite)")
    return "\n".join(lines)
