"""Training of the fused model (``model.fused.FusedNet``): the head, then calibration out of fold.

The linear layer is fitted as ``feature_head`` does (full batch, class-balanced, label smoothing, outlier
exposure on generated probes, L2). The temperature, the unknown rule and the bands are then chosen on
out-of-fold predictions of the training photos (5 inner folds; the held-out photos of a cross-validation are
never seen): the rule with loose probability thresholds (keep 1.0) and a hand-block distance threshold of
1.25 x the 95th percentile of the correctly classified photos' distances (on the real photos this kept false
unknowns near 3 % while catching nearly every generated non-amulet), the bands by ``choose_bands``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amulet_lab.model.fused import CHUNK, VIEWS, FusedNet

__all__ = ["fit_fused", "choose_bands", "RELIABLE_ACCURACY", "VERIFY_ACCURACY"]

#: Out-of-fold accuracy the "reliable" band must reach, and the "verify" band (check with an expert).
RELIABLE_ACCURACY, VERIFY_ACCURACY = 0.97, 0.80


def _fit_head(model: FusedNet, views: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, y: torch.Tensor,
              probe: tuple[torch.Tensor, torch.Tensor], cfg: Any, row_weight: torch.Tensor | None = None) -> None:
    """Scalers, centroids and the linear layer of ``model`` from the training ``rows`` of every view
    (``row_weight``: each row's weight in the loss, by row index; None: all 1)."""
    from amulet_lab.model.optim import AdamW, one_cycle

    cnn = torch.cat([v[0][rows] for v in views])
    hand = torch.cat([v[1][rows] for v in views])
    yy = y[rows].repeat(len(views))
    k = model.num_classes
    with torch.no_grad():
        model.cnn_mean.copy_(cnn.mean(0))
        model.cnn_std.copy_(cnn.std(0).clamp_min(1e-3))
        model.hand_mean.copy_(hand.mean(0))
        model.hand_std.copy_(hand.std(0).clamp_min(1e-3))
        zh = (hand - model.hand_mean) / model.hand_std
        centroids = torch.stack([zh[yy == c].mean(0) if bool((yy == c).any()) else torch.zeros(zh.shape[1])
                                 for c in range(k)])
        model.class_mean.copy_(centroids)
        model.class_var.copy_(((zh - centroids[yy]) ** 2).mean(0).clamp_min(0.05))
        z, pz = model.joined(cnn, hand), model.joined(*probe)
    counts = torch.bincount(yy, minlength=k).float().clamp_min(1)
    weights = (counts.sum() / (k * counts))[yy]
    if row_weight is not None:
        weights = weights * row_weight[rows].repeat(len(views))
    fc = model.fc
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    opt = AdamW([{"params": fc.parameters()}], lr=0.05)
    uniform = torch.full((pz.shape[0], k), 1.0 / k)
    for step in range(300):  # full batch, convex: 300 Adam steps converge well past what matters
        opt.lr = one_cycle(step, 300, 0.05, warmup=0.05)
        opt.zero_grad()
        loss = (F.cross_entropy(fc(z), yy, reduction="none", label_smoothing=cfg.label_smoothing) * weights).mean()
        loss = loss + cfg.outlier_weight * F.cross_entropy(fc(pz), uniform) + cfg.feature_l2 * fc.weight.pow(2).sum()
        loss.backward()
        opt.step()


def choose_bands(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The (reliable, verify) thresholds from held-out probabilities: the lowest confidences at which the answers
    at or above them are right at least ``RELIABLE_ACCURACY`` and ``VERIFY_ACCURACY`` of the time."""
    conf, pred = probs.max(1)
    correct = pred == targets

    def lowest(accuracy: float) -> float:
        for t in [round(0.30 + 0.01 * i, 2) for i in range(70)]:
            kept = conf >= t
            if bool(kept.any()) and float(correct[kept].float().mean()) >= accuracy:
                return t
        return 0.99

    reliable = lowest(RELIABLE_ACCURACY)
    return {"reliable": reliable, "verify": min(lowest(VERIFY_ACCURACY), round(reliable - 0.05, 2))}


def fit_fused(raw: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: Any, spec: Any,
              groups: Any = None, progress: bool = True,
              copies: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Train the fused model on a uint8 batch: features once, the head on all, calibration out of fold.

    ``copies`` = (uint8 batch, index of each one's source photo): re-composited copies trained beside their
    sources. Out of fold, a photo's copies are held out with it; the temperature and bands are chosen on the
    photos themselves, the distance bound of the unknown rule on the photos and their copies (a piece cut
    from a page must not be called unknown for its background alone).
    Returns the model, temperature, unknown rule, bands and the rule's stats (``train.fit`` wraps them).
    """
    from amulet_lab.model.calibration import CROSS_FIT_FOLDS, fit_temperature, fold_ids
    from amulet_lab.model.unknown import UnknownRule, make_probes

    start = time.perf_counter()
    model = FusedNet(num_classes, mean=spec.mean, std=spec.std)
    n = len(y)
    source = torch.arange(n)
    if copies is not None and len(copies[1]):
        raw = torch.cat([raw, copies[0]])
        source = torch.cat([source, copies[1]])
    y_all = y[source]
    row_weight = torch.where(torch.arange(len(source)) < n, 1.0, float(cfg.recomposed_weight))
    views = _batched_views(model, spec.to_input(raw), progress)
    probes = torch.from_numpy(make_probes(48, spec.size, cfg.seed + 1)).permute(0, 3, 1, 2).contiguous()
    probe = model.view_features(spec.to_input(probes), views=1)[0]
    rows = torch.arange(len(y_all))
    if n >= 2 * CROSS_FIT_FOLDS:
        fold = fold_ids(y, groups, CROSS_FIT_FOLDS, cfg.seed)[source]  # a copy is in its source's fold
        lv, dv = torch.empty(len(y_all), num_classes), torch.empty(len(y_all))
        for f in range(CROSS_FIT_FOLDS):
            _fit_head(model, views, rows[fold != f], y_all, probe, cfg, row_weight)
            held = rows[fold == f]
            with torch.no_grad():
                lv[held], dv[held] = model.outputs([(c[held], h[held]) for c, h in views])
    else:  # too few photos to hold any out: the training photos stand in (optimistic; the rule's bounds hold)
        _fit_head(model, views, rows, y_all, probe, cfg, row_weight)
        with torch.no_grad():
            lv, dv = model.outputs(views)
    _fit_head(model, views, rows, y_all, probe, cfg, row_weight)  # the model itself: every training photo and copy
    temperature = fit_temperature(lv[:n], y)
    probs_all = torch.softmax(lv / temperature, 1)
    probs = probs_all[:n]
    correct = lv.argmax(1) == y_all
    known, known_d = (probs_all[correct], dv[correct]) if bool(correct.any()) else (probs_all, dv)
    evaluation = torch.from_numpy(make_probes(36, spec.size, cfg.seed + 2)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        lp, dp = model.forward_with_distance(spec.to_input(evaluation))
    rule, _ = UnknownRule.fit(known, torch.softmax(lp / temperature, 1), known_distance=known_d, probe_distance=dp,
                              keep=1.0)
    rule.max_distance = 1.25 * float(torch.quantile(known_d, 0.95))
    stats = {"known_pass_rate": float((~rule(probs, dv[:n])).float().mean()),
             "probe_reject_rate": float(rule(torch.softmax(lp / temperature, 1), dp).float().mean())}
    model.eval()
    return {"model": model, "temperature": temperature, "unknown": rule, "bands": choose_bands(probs, y),
            "unknown_stats": stats, "seconds": time.perf_counter() - start}


def _batched_views(model: FusedNet, x: torch.Tensor, progress: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``view_features`` of a large batch in chunks, with a progress bar."""
    from tqdm.auto import tqdm

    parts = [model.view_features(x[i:i + CHUNK]) for i in tqdm(range(0, len(x), CHUNK), desc="features",
                                                                  unit="batch", disable=not progress, leave=False)]
    return [(torch.cat([p[v][0] for p in parts]), torch.cat([p[v][1] for p in parts])) for v in range(VIEWS)]
