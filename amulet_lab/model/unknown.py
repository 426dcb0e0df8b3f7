"""Rejecting inputs that are not one of the six amulets ("unknown").

The rule (documented for users, thresholds stored in each checkpoint):

    is_unknown  <=>  max_prob < min_confidence
                 OR  normalised_entropy > max_entropy
                 OR  feature_distance > max_distance        (models with a feature head)

where ``max_prob`` is the largest calibrated class probability, ``normalised_entropy`` the entropy of
the calibrated distribution divided by log(num_classes) (0 = certain, 1 = uniform), and
``feature_distance`` the mean squared, variance-scaled distance of the image's standardised hand-made
features (colour, texture, silhouette) to the nearest class centroid of the training data.

Why the distance: a softmax is confident far from the data as readily as near it (a coin can look
"very wat_nong_e_duk"); the distance notices that a texture has no silhouette, that noise has no
colour or texture any amulet has, and so on. Training fits the thresholds on held-out data: the
probability thresholds keep about 97 % of correctly classified validation amulets, the distance
threshold is 1.5x the 98th percentile of the validation images' distances; the model is also trained
to be uncertain on generated probes ("outlier exposure"). The fitted rule's pass rate on validation
amulets and its rejection rate on generated probes (textures, coin-like discs, noise, stripes, blobs)
are stored in the checkpoint's metadata (``unknown_stats``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["UnknownRule", "make_probes", "normalised_entropy"]


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``probs`` divided by log(num_classes), in [0, 1]."""
    p = probs.clamp_min(1e-12)
    return (-(p * p.log()).sum(-1) / math.log(probs.shape[-1])).clamp(0, 1)


class UnknownRule:
    """Unknown when max prob < ``min_confidence``, normalised entropy > ``max_entropy`` or distance > ``max_distance``."""

    def __init__(self, min_confidence: float = 0.5, max_entropy: float = 0.75, max_distance: float | None = None):
        self.min_confidence = float(min_confidence)
        self.max_entropy = float(max_entropy)
        self.max_distance = None if max_distance is None else float(max_distance)

    def __call__(self, probs: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean per row: unknown or not (``distance`` is ignored when the rule has no distance threshold)."""
        out = (probs.max(-1).values < self.min_confidence) | (normalised_entropy(probs) > self.max_entropy)
        if distance is not None and self.max_distance is not None:
            out = out | (distance > self.max_distance)
        return out

    def to_dict(self) -> dict[str, float | None]:
        """Stored in checkpoints."""
        return {"min_confidence": self.min_confidence, "max_entropy": self.max_entropy, "max_distance": self.max_distance}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnknownRule:
        """Inverse of ``to_dict``."""
        return cls(float(data["min_confidence"]), float(data["max_entropy"]), data.get("max_distance"))

    @classmethod
    def fit(
        cls, known: torch.Tensor, probes: torch.Tensor, *, known_distance: torch.Tensor | None = None,
        probe_distance: torch.Tensor | None = None, keep: float = 0.97,
    ) -> tuple[UnknownRule, dict[str, float]]:
        """Thresholds from calibrated probabilities (and feature distances) of held-out amulets and of probes."""
        if known.shape[0] == 0:
            min_conf, max_ent = 0.5, 0.75
        else:
            kmax = known.max(-1).values
            kent = normalised_entropy(known)
            # Never stricter than sensible bounds: a floor keeps near-ties unknown, a cap keeps
            # confident predictions known however few held-out samples there were.
            min_conf = min(max(float(torch.quantile(kmax, 1.0 - keep)), 1.5 / known.shape[1]), 0.6)
            max_ent = min(max(float(torch.quantile(kent, keep)), 0.3), 0.85)
        max_dist = None
        if known_distance is not None and known_distance.numel() > 0:
            max_dist = 1.5 * float(torch.quantile(known_distance.float(), 0.98))
        rule = cls(min_conf, max_ent, max_dist)
        stats = {
            "known_pass_rate": float((~rule(known, known_distance)).float().mean()) if known.shape[0] else float("nan"),
            "probe_reject_rate": float(rule(probes, probe_distance).float().mean()) if probes.shape[0] else float("nan"),
        }
        return rule, stats

    def __repr__(self) -> str:
        dist = "none" if self.max_distance is None else f"{self.max_distance:.3f}"
        return f"UnknownRule(min_confidence={self.min_confidence:.3f}, max_entropy={self.max_entropy:.3f}, max_distance={dist})"


def make_probes(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` generated non-amulet images (N, size, size, 3) uint8: textures, discs, noise, stripes, blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        kind = i % 6
        base = rng.uniform(0, 1, 3)
        if kind == 0:  # plain texture: one colour, fine noise, a soft gradient
            img = base + rng.normal(0, 0.04, (size, size, 3)) + (xx[..., None] - 0.5) * rng.uniform(-0.3, 0.3)
        elif kind == 1:  # coin: a metallic disc with a rim on a plain background
            cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.4)
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            metal = np.array([[0.85, 0.7, 0.3], [0.75, 0.75, 0.78], [0.72, 0.45, 0.25]])[rng.integers(3)]
            shade = 1 - 0.5 * (d / r) ** 2 + rng.normal(0, 0.03, (size, size))
            img = np.where((d < r)[..., None], metal * shade[..., None], base)
            ring = (np.abs(d - 0.85 * r) < 0.015)[..., None]
            img = np.where(ring, img * 0.7, img)
        elif kind == 2:  # noise
            img = rng.uniform(0, 1, (size, size, 3))
        elif kind == 3:  # stripes or checkerboard
            f = rng.uniform(3, 20)
            angle = rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * f * (xx * math.cos(angle) + yy * math.sin(angle)))
            other = rng.uniform(0, 1, 3)
            img = np.where((wave > 0)[..., None], base, other)
        elif kind == 4:  # blobs: a few soft coloured ellipses (an unrelated scene)
            img = np.broadcast_to(base, (size, size, 3)).copy()
            for _ in range(rng.integers(3, 8)):
                cx, cy = rng.uniform(0, 1, 2)
                sx, sy = rng.uniform(0.05, 0.3, 2)
                blob = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
                img = img * (1 - blob[..., None]) + rng.uniform(0, 1, 3) * blob[..., None]
        else:  # smooth random field (sky, skin, wood-like)
            coarse = rng.uniform(0, 1, (4, 4, 3))
            img = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
            img = img * 0.6 + base * 0.4
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out
