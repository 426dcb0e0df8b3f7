"""The feature head's fit: standardised hand-made features, then an L2-regularised logistic regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amulet_lab.model.arch import AmuletNet
from amulet_lab.model.optim import AdamW, one_cycle
from amulet_lab.model.train_config import TrainConfig

__all__ = ["fit_feature_head"]


def fit_feature_head(model: AmuletNet, feats: torch.Tensor, targets: torch.Tensor, pfeats: torch.Tensor, cfg: TrainConfig) -> None:
    """Standardise features and fit the head's linear layer: L2-regularised logistic regression (uniform targets for probes).

    ``feats`` and ``pfeats`` are ``head.extract`` of the training views and of the probes, computed once by
    the caller: the out-of-fold calibration refits on slices of them.
    """
    head = model.head
    assert head is not None
    with torch.no_grad():
        mean = feats.mean(0)
        std = feats.std(0).clamp_min(1e-3)
        head.feat_mean.copy_(mean)
        head.feat_std.copy_(std)
        z = (feats - mean) / std
        pz = (pfeats - mean) / std
        k = model.num_classes
        centroids = torch.stack([z[targets == c].mean(0) if bool((targets == c).any()) else torch.zeros(z.shape[1]) for c in range(k)])
        head.class_mean.copy_(centroids)
        head.class_var.copy_(((z - centroids[targets]) ** 2).mean(0).clamp_min(0.05))
    counts = torch.bincount(targets, minlength=k).float().clamp_min(1)
    weights = (counts.sum() / (k * counts))[targets]
    fc = head.fc
    torch.nn.init.zeros_(fc.weight)
    torch.nn.init.zeros_(fc.bias)
    opt = AdamW([{"params": fc.parameters()}], lr=0.05)
    uniform = torch.full((pz.shape[0], k), 1.0 / k)
    # Full-batch: a convex problem of a few thousand rows; 300 Adam steps converge well past what matters.
    for step in range(300):
        opt.lr = one_cycle(step, 300, 0.05, warmup=0.05)
        opt.zero_grad()
        loss = (F.cross_entropy(fc(z), targets, reduction="none", label_smoothing=cfg.label_smoothing) * weights).mean()
        if pz.shape[0]:
            loss = loss + cfg.outlier_weight * F.cross_entropy(fc(pz), uniform)
        loss = loss + cfg.feature_l2 * fc.weight.pow(2).sum()
        loss.backward()
        opt.step()
