"""Plain-torch networks small enough to train on 2 CPU cores in minutes (no torchvision).

``build_model(arch, num_classes, **kwargs)`` builds an ``AmuletNet``: a compact CNN and/or a linear
head on hand-made features (``features.HandFeatures``), combined as a weighted sum of their
log-probabilities (a product of experts). The features want detail (128 px input); the CNN may run on
the input resized to ``cnn_size`` (64 px in the ensemble recipe: four times cheaper, no less accurate).
Test-time augmentation (a horizontal flip, for the CNN only: the features' relief layout is not
mirror-symmetric) happens inside ``forward`` in eval mode, so every caller gets the same logits.

Architectures:
    tiny      8-16-32 channels, no features: trains in seconds, for tests
    small     32-48-96-160 channels (~0.45 M parameters, ~1.8 MB)
    ensemble  ``small`` CNN + feature head (the bundled synthetic model)
    features  the feature head alone, a linear model on hand-made features
    fused     pretrained EfficientNet-Lite0 features of the object crop + hand features, one linear head
              (``model.fused``; the default recipe: best on real photos)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amulet_lab.errors import ValidationError
from amulet_lab.model.features import FEATURE_DIM, HandFeatures

__all__ = ["AmuletNet", "ConvNet", "FeatureHead", "build_model", "ARCHITECTURES"]

#: arch name -> (CNN widths or None, use features)
ARCHITECTURES: dict[str, tuple[tuple[int, ...] | None, bool]] = {
    "tiny": ((8, 16, 32), False),
    "small": ((32, 48, 96, 160), False),
    "ensemble": ((32, 48, 96, 160), True),
    "features": (None, True),
    "fused": (None, True),  # model.fused.FusedNet: no CNN trained, a linear head on fixed features
}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """A VGG-style CNN: a strided stem with max-pool, then (conv, conv, max-pool) stages, global average pool, linear."""

    def __init__(self, num_classes: int, widths: tuple[int, ...], dropout: float = 0.3, input_size: int | None = None):
        super().__init__()
        self.input_size = input_size
        # Stem at 1/4 resolution early: most of the cost of small CNNs is in the first full-size layers.
        layers: list[nn.Module] = [_conv_bn(3, widths[0], stride=2), nn.MaxPool2d(2)]
        cin = widths[0]
        for cout in widths[1:]:
            layers += [_conv_bn(cin, cout), _conv_bn(cout, cout), nn.MaxPool2d(2)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (the input is first resized to ``input_size`` when one is set)."""
        if self.input_size is not None and (x.shape[-1] != self.input_size or x.shape[-2] != self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        h = self.body(x)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(self.dropout(h))


class FeatureHead(nn.Module):
    """Standardised hand-made features -> linear logits; the scaler is stored as buffers."""

    def __init__(self, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.extract = HandFeatures(mean, std)
        self.register_buffer("feat_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feat_std", torch.ones(FEATURE_DIM))
        # For the unknown rule: class centroids and per-feature variance around them (standardised space).
        self.register_buffer("class_mean", torch.zeros(num_classes, FEATURE_DIM))
        self.register_buffer("class_var", torch.ones(FEATURE_DIM))
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a normalised image batch, standardised with the stored scaler."""
        return (self.extract(x) - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(self.standardised(x))

    def distance(self, z: torch.Tensor) -> torch.Tensor:
        """Mean squared (variance-scaled) distance of standardised features to the nearest class centroid."""
        d = ((z.unsqueeze(1) - self.class_mean.unsqueeze(0)) ** 2 / self.class_var).mean(2)
        return d.min(1).values


class AmuletNet(nn.Module):
    """CNN and/or feature head; log-probabilities summed with weights; flip TTA for the CNN in eval mode."""

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] | None,
        use_features: bool,
        *,
        dropout: float = 0.3,
        feature_weight: float = 0.5,
        tta: bool = True,
        cnn_size: int | None = None,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
    ):
        super().__init__()
        if widths is None and not use_features:
            raise ValidationError("a model needs a CNN, features or both", field="arch")
        self.num_classes = num_classes
        self.cnn = ConvNet(num_classes, tuple(widths), dropout, cnn_size) if widths else None
        self.head = FeatureHead(num_classes, tuple(mean), tuple(std)) if use_features else None
        self.feature_weight = float(feature_weight) if (self.cnn is not None and self.head is not None) else (
            1.0 if self.cnn is None else 0.0
        )
        self.tta = bool(tta)

    def forward_with_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (as ``forward``) and, when the model has a feature head, each image's feature distance."""
        parts = []
        distance = None
        if self.cnn is not None:
            cnn = F.log_softmax(self.cnn(x), 1)
            if not self.training and self.tta:
                cnn = 0.5 * (cnn + F.log_softmax(self.cnn(x.flip(3)), 1))
            parts.append((1 - self.feature_weight) * cnn)
        if self.head is not None:
            z = self.head.standardised(x)
            parts.append(self.feature_weight * F.log_softmax(self.head.fc(z), 1))
            distance = self.head.distance(z)
        return torch.stack(parts).sum(0), distance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Combined log-probability-like logits (softmax of them gives the uncalibrated probabilities)."""
        return self.forward_with_distance(x)[0]


def build_model(arch: str, num_classes: int, **kwargs: Any) -> AmuletNet:
    """A fresh model of a named architecture (see ``ARCHITECTURES``); kwargs go to ``AmuletNet``."""
    if arch not in ARCHITECTURES:
        raise ValidationError(
            f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}", field="arch", value=arch, code="E_ARCH"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValidationError(f"num_classes must be an int >= 2, got {num_classes!r}", field="num_classes", value=num_classes)
    if arch == "fused":
        from amulet_lab.model.fused import FusedNet

        return FusedNet(num_classes, **kwargs)  # type: ignore[return-value]
    widths, use_features = ARCHITECTURES[arch]
    return AmuletNet(num_classes, widths, use_features, **kwargs)
