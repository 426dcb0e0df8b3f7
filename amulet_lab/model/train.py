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
"""

from __future__ import annotations

import copy
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
from amulet_lab.model.unknown import UnknownRule, make_probes

__all__ = ["TrainConfig", "TrainResult", "BUNDLED_CONFIG", "train", "fit", "augment", "fit_temperature", "predict_logits"]

log = logging.getLogger("amulet_lab.model")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the defaults are the default recipe)."""

    arch: str = "features"
    img_size: int = 128
    # The CNN sees the input resized to this (0: the input size). Features want 128 px of detail; the CNN
    # was as accurate at 64 px and four times cheaper there.
    cnn_size: int = 64
    epochs: int = 160
    batch_size: int = 32
    lr: float = 5e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    feature_weight: float = 0.5
    # 0.03-0.06 was best on the real photos in a quick 5-fold CV over features computed once (a throwaway
    # script, not shipped; accuracy 0.86 at 0.01, 0.88 at 0.04, 0.84 at 0.2). The full recipe at 0.04:
    # 0.859 by `amulet-lab evaluate CKPT DATA --cv 5` (README).
    feature_l2: float = 4e-2
    # Views per training image for the feature head: the image itself, then mildly augmented copies.
    feature_views: int = 3
    outlier_weight: float = 0.15
    probes_per_batch: int = 4
    patience: int = 25
    # Early stopping looks only from here on: the feature head alone scores well at epoch 1 and the CNN
    # needs most of its schedule before it helps, so an early peak on a small validation set is noise.
    min_epochs: int = 80
    seed: int = 0
    # Torch threads while training (0: leave torch's setting). One: convolutions this small gain little from a
    # second thread, and on a shared machine OpenMP threads waiting on each other made steps 4x slower.
    threads: int = 1

    def __post_init__(self) -> None:
        from amulet_lab.model.arch import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise ValidationError(f"unknown architecture {self.arch!r}; choose from {sorted(ARCHITECTURES)}",
                                  field="arch", value=self.arch, code="E_ARCH")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValidationError("threads must be a whole number >= 0", field="threads", value=self.threads)
        if not isinstance(self.cnn_size, int) or isinstance(self.cnn_size, bool) or self.cnn_size < 0:
            raise ValidationError("cnn_size must be a whole number >= 0", field="cnn_size", value=self.cnn_size)
        for name in ("img_size", "epochs", "batch_size", "feature_views", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a whole number >= 1, got {value!r}", field=name, value=value)
        if not 0 <= self.feature_weight <= 1:
            raise ValidationError("feature_weight must be in [0, 1]", field="feature_weight", value=self.feature_weight)
        if self.lr <= 0:
            raise ValidationError("lr must be > 0", field="lr", value=self.lr)


#: The training configuration of the bundled synthetic model (``amulet-lab train-default``), every field
#: pinned: a later change of ``TrainConfig``'s defaults (tuned for real photos) must not change that model,
#: whose rebuild is bit-identical.
BUNDLED_CONFIG: dict[str, Any] = {
    "arch": "ensemble", "img_size": 128, "cnn_size": 64, "epochs": 14, "batch_size": 32, "lr": 5e-3,
    "weight_decay": 5e-4, "label_smoothing": 0.1, "dropout": 0.3, "feature_weight": 0.5, "feature_l2": 4e-2,
    "feature_views": 3, "outlier_weight": 0.15, "probes_per_batch": 4, "patience": 8, "min_epochs": 6, "seed": 0,
    "threads": 1,
}


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


def augment(batch: torch.Tensor, spec: PreprocessSpec, gen: torch.Generator, *, strength: float = 1.0) -> torch.Tensor:
    """Random views of a uint8 batch -> normalised float batch at ``spec.size``."""
    n = batch.shape[0]
    x = batch.float() / 255.0

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    s = strength
    scale = u(1 - 0.3 * s, 1.0)  # side share kept: area 0.49..1
    ratio = torch.exp(u(-0.15 * s, 0.15 * s))
    angle = u(-25 * s, 25 * s) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    tx = (1 - scale) * u(-1, 1)
    ty = (1 - scale) * u(-1, 1)
    sx, sy = scale * ratio.sqrt(), scale / ratio.sqrt()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([sx * cos * flip, -sy * sin, tx], 1), torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, (n, 3, spec.size, spec.size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour: brightness, contrast, saturation, a small hue rotation (material colour matters, so little)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    sat = u(1 - 0.3 * s, 1 + 0.3 * s).view(n, 1, 1, 1)
    x = gray + (x - gray) * sat
    contrast = u(1 - 0.25 * s, 1 + 0.25 * s).view(n, 1, 1, 1)
    x = (x - gray.mean((2, 3), keepdim=True)) * contrast + gray.mean((2, 3), keepdim=True)
    x = x * u(1 - 0.25 * s, 1 + 0.25 * s).view(n, 1, 1, 1)
    hue = u(-0.04 * s, 0.04 * s) * 2 * math.pi
    x = _hue_rotate(x, hue)
    # background swap: photos come on many backdrops; repaint the detected background sometimes
    swap = torch.rand(n, generator=gen) < 0.3 * s
    if bool(swap.any()):
        from amulet_lab.model.features import HandFeatures

        mask = HandFeatures().foreground(x.clamp(0, 1)).unsqueeze(1)
        colour = torch.rand(n, 3, 1, 1, generator=gen)
        bg = colour + 0.03 * torch.randn(n, 3, spec.size, spec.size, generator=gen)
        x = torch.where(swap.view(n, 1, 1, 1) & (mask < 0.5), bg, x)
    noisy = (torch.rand(n, generator=gen) < 0.3 * s).float().view(n, 1, 1, 1)
    x = x + noisy * 0.03 * torch.randn(x.shape, generator=gen)
    return spec.normalise(x.clamp(0, 1))


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``angle`` radians per image, in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    n = x.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # n, 3, 3
    return torch.einsum("nij,njhw->nihw", m, x)


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


class _AdamW:
    """Minimal AdamW (decoupled weight decay) over parameter groups.

    Why not ``torch.optim.AdamW``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``,
    which costs 5-20 s on a busy 2-core machine, once per process (every CLI call, every test run).
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [{"params": list(g["params"]), "weight_decay": g.get("weight_decay", 0.0)} for g in groups]
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in self.groups for p in g["params"]}

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                if g["weight_decay"]:
                    p.mul_(1 - self.lr * g["weight_decay"])
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def _one_cycle(step: int, total: int, peak: float, warmup: float = 0.2) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` of the steps, then cosine decay to peak/100."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (0.04 + 0.96 * step / w)
    progress = (step - w) / max(1, total - w)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _fit_feature_head(model: AmuletNet, feats: torch.Tensor, targets: torch.Tensor, pfeats: torch.Tensor, cfg: TrainConfig) -> None:
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
    opt = _AdamW([{"params": fc.parameters()}], lr=0.05)
    uniform = torch.full((pz.shape[0], k), 1.0 / k)
    # Full-batch: a convex problem of a few thousand rows; 300 Adam steps converge well past what matters.
    for step in range(300):
        opt.lr = _one_cycle(step, 300, 0.05, warmup=0.05)
        opt.zero_grad()
        loss = (F.cross_entropy(fc(z), targets, reduction="none", label_smoothing=cfg.label_smoothing) * weights).mean()
        if pz.shape[0]:
            loss = loss + cfg.outlier_weight * F.cross_entropy(fc(pz), uniform)
        loss = loss + cfg.feature_l2 * fc.weight.pow(2).sum()
        loss.backward()
        opt.step()


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


_CROSS_FIT_FOLDS = 5


def _fold_ids(labels: torch.Tensor, groups: Sequence[str | None] | None, k: int, seed: int) -> torch.Tensor:
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


def _out_of_fold_outputs(
    model: AmuletNet, feats: torch.Tensor, y: torch.Tensor, pfeats: torch.Tensor, fold: torch.Tensor, cfg: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and feature distances of each training image from a feature head fitted without its fold.

    ``feats`` holds the views one after another (the image itself first), as ``_fit`` builds them. For a
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
        _fit_feature_head(fold_model, feats[rows], y[kept].repeat(n_views), pfeats, cfg)
        head = fold_model.head
        assert head is not None
        with torch.no_grad():
            z = (feats[held] - head.feat_mean) / head.feat_std
            logits[held] = F.log_softmax(head.fc(z), 1)
            distance[held] = head.distance(z)
    return logits, distance


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
        _fit_feature_head(model, feats, y.repeat(cfg.feature_views), pfeats, cfg)

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
        opt = _AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
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
                opt.lr = _one_cycle(step_no, total_steps, cfg.lr)
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
    if not len(yv) and model.cnn is None and feats is not None and pfeats is not None and len(y) >= 2 * _CROSS_FIT_FOLDS:
        # No validation split and a linear model only: calibrate on out-of-fold predictions of the training
        # images (cheap: a few linear fits on features computed once), so every image can train and the
        # temperature is still honest.
        fold = _fold_ids(y, train_groups, _CROSS_FIT_FOLDS, cfg.seed)
        lv, dv = _out_of_fold_outputs(model, feats, y, pfeats, fold, cfg)
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


def _arch_kwargs(cfg: TrainConfig, spec: PreprocessSpec) -> dict[str, Any]:
    """The ``build_model`` keyword arguments of a config (stored in the checkpoint as they are)."""
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
) -> Any:
    """Train on a dataset folder (or ``DatasetSplits``) and return a ``Checkpoint`` (saved to ``out`` if given).

    The validation split drives early stopping, calibration and the unknown rule, and its metrics go into
    the checkpoint's metadata. ``include_val=True`` trains on train+val instead (the final model of a
    recipe already validated by cross-validation): a CNN for the full ``epochs`` with T = 1, a features-only
    model calibrated out of fold (see step 5 of the module doc).
    """
    from pathlib import Path

    from amulet_lab.data import DatasetSplits, fingerprint, load_dataset
    from amulet_lab.model.checkpoint import make_checkpoint, save_checkpoint
    from amulet_lab.model.evaluate import metrics

    cfg = config or TrainConfig()
    splits = data if isinstance(data, DatasetSplits) else load_dataset(data, val_fraction=val_fraction, seed=cfg.seed, groups=groups)
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
    arch_kwargs = _arch_kwargs(cfg, result.spec)
    ck = make_checkpoint(
        result.model, arch=cfg.arch, arch_kwargs=arch_kwargs, labels=splits.labels, spec=result.spec,
        temperature=result.temperature, unknown=result.unknown, metadata=metadata,
    )
    if out is not None:
        save_checkpoint(ck, out)
    return ck
