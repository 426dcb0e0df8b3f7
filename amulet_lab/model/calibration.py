"""Calibration: temperature scaling, and the out-of-fold predictions a model with no validation split is fitted on."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from amulet_lab.model.arch import AmuletNet
from amulet_lab.model.feature_head import fit_feature_head
from amulet_lab.model.train_config import TrainConfig

__all__ = ["fit_temperature", "fold_ids", "out_of_fold_outputs", "CROSS_FIT_FOLDS"]


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out data (T in [0.05, 20]).

    A golden-section search over log T: the NLL is unimodal in it, and a 1-D search needs no optimizer.
    """
    if logits.shape[0] == 0:
        return 1.0
    logits = logits.detach().clone()  # may come from inference_mode

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


#: Folds of the out-of-fold calibration (a model needs at least twice as many training images).
CROSS_FIT_FOLDS = 5


def fold_ids(labels: torch.Tensor, groups: Sequence[str | None] | None, k: int, seed: int) -> torch.Tensor:
    """A fold number per training image by ``data.stratified_kfold``'s rule: stratified, seeded, a group in one fold."""
    from pathlib import Path

    from amulet_lab.data import Sample, stratified_kfold

    groups = list(groups) if groups is not None else [None] * len(labels)
    # Samples named by their index: the rule orders by path, so the names only need to be distinct.
    samples = [Sample(Path(f"{i:07d}"), int(label), "", group) for i, (label, group) in enumerate(zip(labels, groups))]
    fold = torch.empty(len(samples), dtype=torch.long)
    for f, (_, held) in enumerate(stratified_kfold(samples, k, seed)):
        fold[[int(s.path.name) for s in held]] = f
    return fold


def out_of_fold_outputs(
    model: AmuletNet, feats: torch.Tensor, y: torch.Tensor, pfeats: torch.Tensor, fold: torch.Tensor, cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and feature distances of each training image from a feature head fitted without its fold.

    ``feats`` holds the views one after another (the image itself first), as ``train.fit`` builds them. For a
    features-only model (``feature_weight`` 1), whose logits are the head's log-probabilities.
    """
    n = len(y)
    n_views = feats.shape[0] // n
    logits = torch.empty(n, model.num_classes)
    distance = torch.empty(n)
    for f in range(int(fold.max()) + 1):
        held = (fold == f).nonzero().squeeze(1)
        kept = (fold != f).nonzero().squeeze(1)
        rows = torch.cat([kept + v * n for v in range(n_views)])
        fold_model = copy.deepcopy(model)  # the same architecture and arguments; its head is refitted below
        fit_feature_head(fold_model, feats[rows], y[kept].repeat(n_views), pfeats, cfg)
        head = fold_model.head
        assert head is not None
        with torch.no_grad():
            z = (feats[held] - head.feat_mean) / head.feat_std
            logits[held] = F.log_softmax(head.fc(z), 1)
            distance[held] = head.distance(z)
    return logits, distance
