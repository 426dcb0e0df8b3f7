"""The training recipe: augmentation, class balancing, early stopping, calibration, unknown rule.

The default architecture is ``features`` (the linear model on hand-made features): on the real amulet6
photos (149, ``amulet-lab evaluate --cv 5``) it scores 0.859 where the ``ensemble`` (plus the CNN) scores 0.818,
because a CNN trained from scratch on about 120 photos is weak there (0.62 out of fold; 0.75 when it sees
the object crop) and lowers the product at every weight tried (0.5 to 0.9). It also trains in seconds,
not minutes. The ensemble remains a choice (``arch="ensemble"``); the bundled synthetic model uses it.

Recipe (suited to a few dozen photos per class, 2 CPU cores):
1. decode every image once to a uint8 tensor slightly larger than the model input;
2. fit the feature head (when the arch has one): hand-made features of the training images and
   a few augmented views, standardised, then an L2-regularised logistic regression;
3. train the CNN with AdamW + warm-up/cosine schedule on augmented batches (random resized crop, flips,
   rotation, colour jitter, background-colour swap, noise, all as one affine warp + colour ops in
   torch), class-balanced sampling, label smoothing, and "outlier exposure": generated non-amulet
   probes pushed towards the uniform distribution;
4. early stopping on the validation split (best epoch by accuracy, then NLL);
5. temperature scaling on the validation split (so the confidence bands mean what they say); with no
   validation split, a features-only model is calibrated on out-of-fold predictions of its training
   images (5 folds by ``data.stratified_kfold``'s rule, groups kept together; at least 10 images), any
   other model keeps T = 1; then the unknown-rejection thresholds (see ``unknown.py``).
Everything draws from seeded generators: the same data and seed give the same weights.

The steps live beside this module: ``train_config`` (``TrainConfig``, ``BUNDLED_CONFIG``), ``augment``
(the views), ``feature_head`` (step 2), ``optim`` (AdamW and the schedule of step 3) and ``calibration``
(step 5); this module runs them in order (``fit``) and makes the checkpoint (``train``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from amulet_lab.errors import ValidationError
from amulet_lab.images import PreprocessSpec, to_uint8_batch
from amulet_lab.model.arch import AmuletNet, build_model
from amulet_lab.model.augment import augment
from amulet_lab.model.calibration import CROSS_FIT_FOLDS, fit_temperature, fold_ids, out_of_fold_outputs
from amulet_lab.model.feature_head import fit_feature_head
from amulet_lab.model.optim import AdamW, one_cycle
from amulet_lab.model.train_config import BUNDLED_CONFIG, TrainConfig
from amulet_lab.model.unknown import UnknownRule, make_probes

__all__ = ["TrainConfig", "TrainResult", "BUNDLED_CONFIG", "train", "fit", "augment", "fit_temperature", "predict_logits"]

log = logging.getLogger("amulet_lab.model")


@dataclasses.dataclass
class TrainResult:
    """A trained model with its calibration, unknown rule and per-epoch history."""

    model: AmuletNet = dataclasses.field(repr=False)
    spec: PreprocessSpec
    temperature: float
    unknown: UnknownRule
    history: list[dict[str, float]] = dataclasses.field(repr=False)
    best_epoch: int
    seconds: float
    unknown_stats: dict[str, float]
    config: TrainConfig
    bands: dict[str, float] | None = None  # (reliable, verify) chosen out of fold, when the recipe does


@torch.inference_mode()
def predict_outputs(model: AmuletNet, x: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eval-mode logits and feature distances (None without a feature head) of a normalised batch, in chunks."""
    model.eval()
    if x.shape[0] == 0:
        return torch.empty(0, model.num_classes), (torch.empty(0) if model.head is not None else None)
    outs = [model.forward_with_distance(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    logits = torch.cat([o[0] for o in outs])
    distance = torch.cat([o[1] for o in outs]) if outs[0][1] is not None else None
    return logits, distance


def predict_logits(model: AmuletNet, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Eval-mode logits of a normalised batch, in chunks."""
    return predict_outputs(model, x, batch_size)[0]


def fit(
    train_images: Sequence[Any],
    train_labels: Sequence[int],
    val_images: Sequence[Any],
    val_labels: Sequence[int],
    num_classes: int,
    config: TrainConfig | None = None,
    *,
    train_groups: Sequence[str | None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a model on images (paths, bytes, PIL or arrays) with integer labels; see the module doc.

    ``train_groups`` (one per training image, or None) keeps a piece's photos in one fold when a
    features-only model without a validation split is calibrated out of fold.
    """
    cfg = config or TrainConfig()
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(train_images, train_labels, val_images, val_labels, num_classes, cfg, train_groups, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _fit(
    train_images: Sequence[Any], train_labels: Sequence[int], val_images: Sequence[Any], val_labels: Sequence[int],
    num_classes: int, cfg: TrainConfig, train_groups: Sequence[str | None] | None, progress: bool,
) -> TrainResult:
    if len(train_images) != len(train_labels) or len(val_images) != len(val_labels) or (
        train_groups is not None and len(train_groups) != len(train_images)
    ):
        raise ValidationError("images and labels differ in length", field="labels")
    if len(train_images) == 0:
        raise ValidationError("no training images", field="train", code="E_EMPTY_DATASET")
    y = torch.tensor(list(train_labels), dtype=torch.long)
    yv = torch.tensor(list(val_labels), dtype=torch.long)
    if int(y.min()) < 0 or int(y.max()) >= num_classes or (len(yv) and (int(yv.min()) < 0 or int(yv.max()) >= num_classes)):
        raise ValidationError(f"labels must be in 0..{num_classes - 1}", field="labels")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    spec = PreprocessSpec(cfg.img_size)
    load_size = cfg.img_size
    raw = to_uint8_batch(train_images, load_size)
    if cfg.arch == "fused":  # features once, a linear head, calibration out of fold (no validation split used)
        from amulet_lab.model.fused_fit import fit_fused

        copies = _recomposed(train_images, cfg, load_size) if cfg.recomposed_copies else None
        done = fit_fused(raw, y, num_classes, cfg, spec, groups=train_groups, progress=progress, copies=copies)
        return TrainResult(model=done["model"], spec=spec, temperature=done["temperature"], unknown=done["unknown"],
                           history=[], best_epoch=0, seconds=time.perf_counter() - start,
                           unknown_stats=done["unknown_stats"], config=cfg, bands=done["bands"])
    xv = spec.normalise(to_uint8_batch(val_images, cfg.img_size).float() / 255.0) if len(val_images) else torch.empty(0, 3, cfg.img_size, cfg.img_size)
    probe_raw = torch.from_numpy(make_probes(max(24, 6 * cfg.probes_per_batch), load_size, cfg.seed + 1)).permute(0, 3, 1, 2).contiguous()
    model = build_model(cfg.arch, num_classes, **_arch_kwargs(cfg, spec))

    feats = pfeats = None
    if model.head is not None:
        # No flipped view: the relief features are not mirror-symmetric, and flips lowered CV accuracy.
        views = [spec.normalise(raw.float() / 255.0)]
        views += [augment(raw, spec, gen, strength=0.4) for _ in range(cfg.feature_views - 1)]
        with torch.no_grad():
            feats = model.head.extract(torch.cat(views))
            pfeats = model.head.extract(spec.normalise(probe_raw.float() / 255.0))
        fit_feature_head(model, feats, y.repeat(cfg.feature_views), pfeats, cfg)

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_key: tuple[float, float] = (-1.0, -math.inf)
    best_epoch = 0
    if model.cnn is not None:
        counts = torch.bincount(y, minlength=num_classes).float()
        sample_w = (1.0 / counts.clamp_min(1))[y]
        steps_per_epoch = max(1, math.ceil(len(y) / cfg.batch_size))
        cnn_params = list(model.cnn.parameters())
        decay = [p for p in cnn_params if p.ndim > 1]
        no_decay = [p for p in cnn_params if p.ndim <= 1]
        opt = AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        total_steps = cfg.epochs * steps_per_epoch
        step_no = 0
        uniform = torch.full((cfg.probes_per_batch, num_classes), 1.0 / num_classes)
        from tqdm.auto import tqdm

        bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress, leave=False)
        since_best = 0
        for epoch in bar:
            model.train()
            if model.head is not None:
                model.head.eval()  # fixed: fitted above
            losses = []
            for _ in range(steps_per_epoch):
                idx = torch.multinomial(sample_w, cfg.batch_size, replacement=True, generator=gen)
                xb = augment(raw[idx], spec, gen)
                logits = model.cnn(xb)
                loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
                if cfg.outlier_weight > 0 and cfg.probes_per_batch > 0:
                    pidx = torch.randint(0, probe_raw.shape[0], (cfg.probes_per_batch,), generator=gen)
                    loss = loss + cfg.outlier_weight * F.cross_entropy(model.cnn(augment(probe_raw[pidx], spec, gen)), uniform)
                opt.lr = one_cycle(step_no, total_steps, cfg.lr)
                step_no += 1
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
            if len(yv):
                lv = predict_logits(model, xv)
                row["val_acc"] = float((lv.argmax(1) == yv).float().mean())
                row["val_nll"] = float(F.cross_entropy(lv, yv))
                key = (row["val_acc"], -row["val_nll"])
                if epoch + 1 >= cfg.min_epochs and key > best_key:
                    best_key, best_epoch, since_best = key, epoch + 1, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since_best += 1
            history.append(row)
            bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "epoch"})
            log.debug("epoch %s", row)
            if len(yv) and epoch + 1 >= cfg.min_epochs and since_best >= cfg.patience:
                break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_epoch = len(history)
    model.eval()
    if not len(yv) and model.cnn is None and feats is not None and pfeats is not None and len(y) >= 2 * CROSS_FIT_FOLDS:
        # No validation split and a linear model only: calibrate on out-of-fold predictions of the training
        # images (cheap: a few linear fits on features computed once), so every image can train and the
        # temperature is still honest.
        fold = fold_ids(y, train_groups, CROSS_FIT_FOLDS, cfg.seed)
        lv, dv = out_of_fold_outputs(model, feats, y, pfeats, fold, cfg)
        yc = y
    else:
        lv, dv = predict_outputs(model, xv)
        yc = yv
    temperature = fit_temperature(lv, yc) if len(yc) else 1.0
    known = torch.softmax(lv / temperature, 1)
    known_distance = dv
    if len(yc):
        correct = lv.argmax(1) == yc
        known = known[correct]
        known_distance = None if dv is None else dv[correct]
    probe_eval = torch.from_numpy(make_probes(36, cfg.img_size, cfg.seed + 2)).permute(0, 3, 1, 2)
    lp, dp = predict_outputs(model, spec.normalise(probe_eval.float() / 255.0))
    pp = torch.softmax(lp / temperature, 1)
    if known.shape[0] < 5:
        # Without enough held-out amulets, the training images (un-augmented) stand in: optimistic, so the
        # rule's bounds in UnknownRule.fit keep it sane.
        lt, known_distance = predict_outputs(model, spec.normalise(raw.float() / 255.0))
        known = torch.softmax(lt / temperature, 1)
    rule, stats = UnknownRule.fit(known, pp, known_distance=known_distance, probe_distance=dp)
    return TrainResult(
        model=model, spec=spec, temperature=temperature, unknown=rule, history=history, best_epoch=best_epoch,
        seconds=time.perf_counter() - start, unknown_stats=stats, config=cfg,
    )


def _recomposed(images: Sequence[Any], cfg: TrainConfig, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.recomposed_copies`` re-composited copies of each training image (uint8 batch) and the index of its source."""
    from amulet_lab.data.recomposite import recomposite
    from amulet_lab.images import decode

    crops, source = [], []
    for i, item in enumerate(images):
        image = decode(item)
        for j in range(cfg.recomposed_copies):
            crops.append(recomposite(image, seed=(cfg.seed * 1_000_003 + i) * 16 + j))
            source.append(i)
    return to_uint8_batch(crops, size), torch.tensor(source, dtype=torch.long)


def _arch_kwargs(cfg: TrainConfig, spec: PreprocessSpec) -> dict[str, Any]:
    """The ``build_model`` keyword arguments of a config (stored in the checkpoint as they are)."""
    if cfg.arch == "fused":  # the backbone is named, not stored: its package and the sha256 of its file
        from amulet_lab.model.backbone import WEIGHTS_SHA256
        from amulet_lab.model.fused import BACKBONE_PACKAGE

        return {"mean": list(spec.mean), "std": list(spec.std), "power": 0.25, "margin": 0.06,
                "backbone": BACKBONE_PACKAGE, "backbone_sha256": WEIGHTS_SHA256}
    return {
        "dropout": cfg.dropout, "feature_weight": cfg.feature_weight, "mean": list(spec.mean), "std": list(spec.std),
        "cnn_size": cfg.cnn_size if 0 < cfg.cnn_size < cfg.img_size else None,
    }


def train(
    data: Any,
    *,
    out: str | Any | None = None,
    config: TrainConfig | None = None,
    val_fraction: float = 0.2,
    groups: Any = None,
    include_val: bool = False,
    progress: bool = True,
    review: Any = None,
) -> Any:
    """Train on a dataset folder (or ``DatasetSplits``) and return a ``Checkpoint`` (saved to ``out`` if given).

    ``review`` (a ``path,sha256,label`` CSV, see ``data.review``) overrides and extends the folder's labels as
    ``load_dataset(..., review=)`` does; what it changed goes into the checkpoint's metadata (``review``).

    The validation split drives early stopping, calibration and the unknown rule, and its metrics go into
    the checkpoint's metadata. ``include_val=True`` trains on train+val instead (the final model of a
    recipe already validated by cross-validation): a CNN for the full ``epochs`` with T = 1, a features-only
    model calibrated out of fold (see step 5 of the module doc).
    """
    from pathlib import Path

    from amulet_lab.data import DatasetSplits, fingerprint, load_dataset
    from amulet_lab.model.checkpoint import make_checkpoint, save_checkpoint
    from amulet_lab.model.metrics import metrics

    cfg = config or TrainConfig()
    if isinstance(data, DatasetSplits):
        if review is not None:
            raise ValidationError("review= applies when a folder is loaded: pass load_dataset(..., review=) splits "
                                  "or the folder", field="review", value=str(review), code="E_REVIEW_SPLITS")
        splits = data
    else:
        splits = load_dataset(data, val_fraction=val_fraction, seed=cfg.seed, groups=groups, review=review)
    train_samples = list(splits.train) + (list(splits.val) if include_val else [])
    val_samples = [] if include_val else list(splits.val)
    if not train_samples:
        raise ValidationError("the dataset has no training images", field="data", code="E_EMPTY_DATASET")
    keys = [label.key for label in splits.labels]
    result = fit(
        [s.path for s in train_samples], [s.label for s in train_samples], [s.path for s in val_samples],
        [s.label for s in val_samples], len(keys), cfg, train_groups=[s.group for s in train_samples], progress=progress,
    )
    val_metrics: dict[str, Any] = {}
    if val_samples:
        x = result.spec.normalise(to_uint8_batch([s.path for s in val_samples], result.spec.size).float() / 255.0)
        probs = torch.softmax(predict_logits(result.model, x) / result.temperature, 1)
        full = metrics(probs, [s.label for s in val_samples], keys)
        val_metrics = {k: full[k] for k in ("n", "accuracy", "macro_f1", "top2_accuracy", "ece", "nll")}
    root = Path(splits.root) if splits.root else None
    synth_marker = root / "synth.json" if root else None
    metadata = {
        "dataset": root.name if root else None,
        "synthetic": bool(synth_marker and synth_marker.is_file()),
        "data_fingerprint": fingerprint(train_samples + val_samples),
        "n_train": len(train_samples),
        "n_val": len(val_samples),
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 2),
        "metrics": val_metrics,
        "unknown_stats": result.unknown_stats,
        "history": result.history,
    }
    if splits.review is not None:
        metadata["review"] = dict(splits.review)
    if result.bands is not None:
        metadata["bands"] = dict(result.bands)
    arch_kwargs = _arch_kwargs(cfg, result.spec)
    ck = make_checkpoint(
        result.model, arch=cfg.arch, arch_kwargs=arch_kwargs, labels=splits.labels, spec=result.spec,
        temperature=result.temperature, unknown=result.unknown, metadata=metadata,
    )
    if out is not None:
        save_checkpoint(ck, out)
    return ck
