"""The hyper-parameters of the training recipe (``TrainConfig``) and the bundled model's pinned configuration."""

from __future__ import annotations

import dataclasses
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["TrainConfig", "BUNDLED_CONFIG"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the defaults are the default recipe)."""

    # The default recipe (see model/fused.py for what was measured): pretrained features of the object crop and
    # the hand features in one head, at 224 px. The synthetic stand-in keeps its own (BUNDLED_CONFIG).
    arch: str = "fused"
    img_size: int = 224
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
    # L2 of the linear head on the sum of its squared weights. The fused head: 0.01 (5-fold CV on the real
    # photos: 0.926 at 0.005, 0.933 at 0.01, 0.919 at 0.02). The hand-features-only head was best at 0.04.
    feature_l2: float = 1e-2
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
    # The fused recipe also trains on this many copies of each training crop re-composited on a page, paper,
    # wood or cloth with a print or phone look (``data.recomposite``), so that a piece cut from a phone photo
    # is recognised, not only a crop on red. 0: the red crops alone.
    recomposed_copies: int = 0
    # Each copy's weight in the head's loss (a photo itself weighs 1).
    recomposed_weight: float = 1.0

    def __post_init__(self) -> None:
        from amulet_lab.model.arch import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise ValidationError(f"unknown architecture {self.arch!r}; choose from {sorted(ARCHITECTURES)}",
                                  field="arch", value=self.arch, code="E_ARCH")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValidationError("threads must be a whole number >= 0", field="threads", value=self.threads)
        if not isinstance(self.cnn_size, int) or isinstance(self.cnn_size, bool) or self.cnn_size < 0:
            raise ValidationError("cnn_size must be a whole number >= 0", field="cnn_size", value=self.cnn_size)
        if not isinstance(self.recomposed_copies, int) or isinstance(self.recomposed_copies, bool) \
                or not 0 <= self.recomposed_copies <= 8:
            raise ValidationError("recomposed_copies must be a whole number in 0..8", field="recomposed_copies",
                                  value=self.recomposed_copies)
        if self.recomposed_copies and self.arch != "fused":
            raise ValidationError("recomposed_copies trains the fused head only: use arch='fused' or 0 copies",
                                  field="recomposed_copies", value=self.recomposed_copies)
        if not 0 < self.recomposed_weight <= 1:
            raise ValidationError("recomposed_weight must be in (0, 1]", field="recomposed_weight",
                                  value=self.recomposed_weight)
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
    "threads": 1, "recomposed_copies": 0, "recomposed_weight": 1.0,
}
