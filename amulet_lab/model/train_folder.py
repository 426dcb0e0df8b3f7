"""Train a folder as the bundled model is trained: cross-validate the recipe, train it on every photo, write the card.

``train_folder(data, out=..., config=..., k=5)`` is what ``amulet-lab train-default`` (``bundled.train_real``) and
the notebook's Train tab run: a stratified k-fold cross-validation of the recipe over all photos (train/, val/
and test/ alike: every figure is out of fold), then the final model on all of them (``train(include_val=True)``),
a ``ModelCard`` holding the cross-validated figures, and the checkpoint written atomically and loaded back.
The ``TrainRun`` it returns keeps the out-of-fold answer of every photo (the misclassified photos, the
reliability diagram) and the time each part took.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["TrainRun", "train_folder", "CARD_FIGURES"]

#: The cross-validated figures a card carries (``cross_validate``'s names; ``ece`` is the pooled one).
CARD_FIGURES = ("accuracy", "accuracy_std", "macro_f1", "top2_accuracy", "ece", "reliable_accuracy",
                "reliable_coverage", "false_unknown_rate", "probe_caught_rate", "recomposed_accuracy",
                "recomposed_false_unknown_rate")


@dataclasses.dataclass
class TrainRun:
    """One training run of a folder: the checkpoint (with its card), the CV summary and out-of-fold answers, times."""

    checkpoint: Any = dataclasses.field(repr=False)
    card: Any = dataclasses.field(repr=False)
    cv: dict[str, Any] = dataclasses.field(repr=False)
    counts: dict[str, int]
    root: Path | None
    k: int
    seconds_cv: float
    seconds_final: float
    path: Path | None = None

    @property
    def seconds(self) -> float:
        """Wall time of the whole run: the cross-validation and the final model."""
        return self.seconds_cv + self.seconds_final

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Every photo's out-of-fold answer: path, target, predicted, confidence, unknown, fold."""
        return list(self.cv.get("predictions", []))

    @property
    def misclassified(self) -> list[dict[str, Any]]:
        """The out-of-fold answers whose top class is not the photo's class, least confident first."""
        wrong = [p for p in self.predictions if p["predicted"] != p["target"]]
        return sorted(wrong, key=lambda p: (p["confidence"], p["path"]))

    def __repr__(self) -> str:
        return (f"TrainRun(photos={sum(self.counts.values())}, classes={len(self.counts)}, k={self.k}, "
                f"arch={self.checkpoint.arch!r}, cv_accuracy={self.cv['accuracy']:.3f}, seconds={self.seconds:.1f}, "
                f"path={str(self.path) if self.path else None!r})")


def _files_per_class(samples: list[Any]) -> dict[str, int]:
    tally = collections.Counter(s.key for s in samples)
    return dict(sorted(tally.items()))


def train_folder(
    data: Any,
    *,
    out: str | Path | None = None,
    config: Any = None,
    k: int = 5,
    source: str | None = None,
    licence: str | None = None,
    command: str = "amulet_lab.model.train_folder",
    on_step: Callable[[int, int, str], None] | None = None,
    progress: bool = False,
    recomposed: bool = False,
    unseen_class: bool = False,
) -> TrainRun:
    """Cross-validate ``config``'s recipe over every photo of ``data`` (a folder or ``DatasetSplits``) in ``k`` folds,
    train the final model on all of them and write it with its model card to ``out`` (atomically; None: not written).

    ``source`` and ``licence`` go into the card (default: the folder's path, and "not recorded"); ``command`` is the
    card's recipe name. ``on_step(done, total, what)`` is called after each fold and after the final model
    (``total`` is ``k + 1``). ``recomposed`` also scores each held-out photo re-composited on a page, wood and
    cloth; ``unseen_class`` adds ``evaluate.leave_one_class_out`` (a class left out of training by turns: how
    often its photos come back unknown); both go into the card (``train-default`` sets both). Raises ``ValidationError`` E_TRAIN_CLASSES when fewer than two classes have photos,
    and the data loader's and ``stratified_kfold``'s errors (E_DATASET_*, E_KFOLD_*) for a folder that cannot be used.
    """
    from amulet_lab import __version__
    from amulet_lab.data import DatasetSplits, content_fingerprint, load_dataset
    from amulet_lab.model.card import ModelCard
    from amulet_lab.model.checkpoint import load_checkpoint, save_checkpoint
    from amulet_lab.model.evaluate import cross_validate, leave_one_class_out
    from amulet_lab.model.train import TrainConfig, train

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValidationError(f"k (cross-validation folds) must be a whole number >= 2, got {k!r}", field="k",
                              value=k, code="E_KFOLD_K")
    if on_step is not None and not callable(on_step):
        raise ValidationError("on_step must be callable", field="on_step", value=type(on_step).__name__)
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ValidationError("config must be a TrainConfig", field="config", value=type(cfg).__name__)
    splits = data if isinstance(data, DatasetSplits) else load_dataset(data, val_fraction=0.0)
    samples = splits.all
    counts = _files_per_class(samples)
    if len(counts) < 2:
        raise ValidationError(f"a classifier needs photos of at least two classes; this folder has "
                              f"{', '.join(counts) or 'none'}", field="data", value=str(splits.root),
                              code="E_TRAIN_CLASSES")
    keys = [label.key for label in splits.labels]
    root = Path(splits.root) if splits.root else None
    step = (lambda done, what: on_step(done, k + 1, what)) if on_step else (lambda done, what: None)

    start = time.perf_counter()
    cv = cross_validate(samples, len(keys), keys, k=k, seed=cfg.seed, config=cfg, progress=progress,
                        on_fold=lambda done, total: step(done, f"fold {done} of {total}"), keep_predictions=True,
                        recomposed=recomposed)
    loco = leave_one_class_out(samples, keys, config=cfg, progress=progress) if unseen_class else None
    seconds_cv = time.perf_counter() - start
    start = time.perf_counter()
    ck = train(splits, config=cfg, include_val=True, progress=progress)
    seconds_final = time.perf_counter() - start
    step(k + 1, "final model")

    synthetic = bool(root and (root / "synth.json").is_file())
    grouped = any(s.group is not None for s in samples)
    unit = ("a piece's photos kept in one fold" if grouped else
            f"each photo a unit ({root.name if root else 'the data'} has no groups file)")
    figures = {name: cv["pooled"]["ece"] if name == "ece" else cv[name] for name in CARD_FIGURES if name in cv}
    evaluation = (f"{k}-fold cross-validation over all {len(samples)} photos, stratified, seed {cfg.seed}, {unit}, "
                  "out of fold; ECE pooled over the folds")
    if recomposed:
        evaluation += "; each held-out photo also re-composited on a page, wood and cloth"
    if loco is not None:
        figures["unseen_class_unknown_rate"] = loco["unknown_rate"]
        evaluation += "; a class left out of training by turns, its photos on red and re-composited"
    card = ModelCard(
        dataset=root.name if root else "(in memory)", real_photos=not synthetic, files_per_class=counts,
        data_fingerprint=content_fingerprint(samples),
        source=source or (f"drawings made by amulet_lab.data.synthesize in {root}, not photographs of amulets"
                          if synthetic else f"the photos in {root}"),
        licence=licence or ("generated by this project (MIT)" if synthetic else "not recorded"),
        recipe={"command": command, **dataclasses.asdict(cfg)},
        evaluation=evaluation,
        # A figure that is not defined (no answer in the 'reliable' band: its accuracy is NaN) is left out.
        figures={name: round(float(value), 4) for name, value in figures.items() if math.isfinite(float(value))},
        created=time.strftime("%Y-%m-%d", time.gmtime()), amulet_lab_version=__version__,
    )
    ck.metadata["model_card"] = card.to_dict()
    ck.metadata["cross_validation"] = {name: cv[name] for name in (
        "k", "accuracy", "accuracy_std", "macro_f1", "top2_accuracy", "ece", "false_unknown_rate",
        "probe_caught_rate", "reliable_accuracy", "reliable_coverage", "recomposed_accuracy", "recomposed_accuracy_std",
        "recomposed_false_unknown_rate") if name in cv} | {"pooled": cv["pooled"]}
    if loco is not None:
        ck.metadata["leave_one_class_out"] = loco
    ck.metadata["recipe"] = {"command": command, "data": root.name if root else None}
    ck.metadata["cv_seconds"] = round(seconds_cv, 2)  # train_seconds (set by train) is the final model's
    ck.metadata.pop("history", None)
    run = TrainRun(checkpoint=ck, card=card, cv=cv, counts=counts, root=root, k=k, seconds_cv=seconds_cv,
                   seconds_final=seconds_final)
    if out is not None:
        save_checkpoint(ck, out)
        load_checkpoint(out)  # what we wrote must load
        run.path = Path(out)
    return run
