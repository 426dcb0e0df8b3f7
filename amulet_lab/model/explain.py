"""Why this answer: which regions of the model input drove the top class (``AmuletClassifier.explain``).

The photo goes through the classifier's own stages (``decode``: ``security.validate_image``; ``preprocess``:
``PreprocessSpec.to_input``), so the heatmap lies over exactly the square input the model sees (the photo
squeezed to ``spec.size``). What drove the class, per architecture (every one ``arch.build_model`` builds;
any other model raises ``ModelError`` E_EXPLAIN_ARCH):

- **a CNN** (``tiny``, ``small``, the CNN of ``ensemble``): Grad-CAM on its last convolution's feature map
  (before the last max-pool): the gradient of the class's logit, averaged per channel, weights the channels;
  for the flip test-time view the map is flipped back and both views averaged; ReLU, bilinear to the input.
- **a linear head on hand features** (``features``, the feature head of ``ensemble``): each feature's exact
  contribution to the class's logit, ``w_j * z_j`` (z standardised). The grid features (HOG 4x4, LBP 3x3,
  the 8x8 thumbnail, all over the object crop) are summed per cell: ``Explanation.cells``; the features with
  no place (global LBP texture, shape) and the bias make ``unplaced``: the cells plus ``unplaced`` are the logit,
  exactly. The heatmap spreads each cell's contribution evenly over its pixels (positive part).
- **ensemble**: both maps, each scaled to [0, 1], mixed with the model's own weights (1 - w for the CNN, w).
- **fused** (the default): Grad-CAM through the CNN path: EfficientNet-Lite0's last map (the 1280-channel
  head, 7x7 over the object crop), the gradient of the class's logit through the pooled, powered,
  standardised block and the linear layer, both views (the mirror flipped back), warped from the crop onto
  the input (0 outside it). Its hand block's cells are in ``cells`` (mean of both views) but not in the heatmap.

The forward passes run under the classifier's forward lock (one per model). Only the small parts after
the explained feature map are differentiated, never the backbone: an explanation costs about one forward.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from amulet_lab.errors import ModelError, ValidationError, error_context
from amulet_lab.model.arch import AmuletNet, ConvNet
from amulet_lab.model.features import _CROP, FEATURE_GROUPS, HandFeatures

__all__ = ["Explanation", "explain"]

#: The grid feature groups of ``HandFeatures``: name -> (grid side, features per cell, crop pixels per cell, offset).
_GRIDS = {"hog": (4, 9, _CROP / 4, 0), "lbp_grid": (3, 10, (_CROP - 4) / 3, 2), "thumbnail": (8, 1, _CROP / 8, 0)}
_OFFSETS = dict(zip(FEATURE_GROUPS, np.cumsum([0, *FEATURE_GROUPS.values()])[:-1].tolist()))
_EPS = 1e-6  # the signed power's gradient is infinite at 0: pooled values below this get none (dead channels)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Explanation:
    """Which regions of the model input drove ``label``: ``heatmap`` (H x W in [0, 1]) over ``image`` (H x W x 3)."""

    heatmap: np.ndarray
    label: str
    english: str
    probability: float
    image: np.ndarray
    method: str
    cells: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    unplaced: float | None = None
    logit: float | None = None
    parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    photo_size: tuple[int, int] | None = None  # (width, height) of the decoded photo: the overlay's shape

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The input with the heatmap laid over it (the ``inferno`` colours, ``alpha`` where the heat is 1)."""
        from matplotlib import colormaps

        heat = colormaps["inferno"](self.heatmap)[..., :3]
        a = float(alpha) * self.heatmap[..., None] ** 0.5
        mixed = np.clip(self.image / 255.0 * (1 - a) + heat * a, 0, 1)
        return (mixed * 255).round().astype(np.uint8)

    def overlay_png(self, alpha: float = 0.5) -> bytes:
        """``overlay`` as PNG bytes, stretched back to the photo's proportions (the model saw it squeezed square)."""
        from PIL import Image

        img = Image.fromarray(self.overlay(alpha))
        if self.photo_size is not None:
            w, h = self.photo_size
            side = img.width
            img = img.resize((side, max(1, round(side * h / w))) if w >= h else (max(1, round(side * w / h)), side),
                             Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def figure(self) -> Any:
        """A matplotlib figure: the model input, and the heatmap over it (colour bar 0-1)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.2, 3.6), layout="constrained")
        left, right = fig.subplots(1, 2)
        left.imshow(self.image)
        left.set_title("model input", fontsize=10)
        right.imshow(self.image)
        shown = right.imshow(self.heatmap, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        right.set_title(f"why {self.english} ({self.probability:.0%}): {self.method}", fontsize=10)
        for ax in (left, right):
            ax.set_axis_off()
        fig.colorbar(shown, ax=right, fraction=0.046, pad=0.02)
        return fig

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def __repr__(self) -> str:
        peak = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return (f"Explanation(label={self.label!r}, p={self.probability:.3f}, method={self.method!r}, "
                f"heatmap={self.heatmap.shape[0]}x{self.heatmap.shape[1]}, peak=(row {peak[0]}, col {peak[1]}))")


def explain(classifier: Any, image: Any, *, label: str | None = None) -> Explanation:
    """Which regions of ``image`` drove ``label`` (default: the top class) for ``classifier`` (see the module doc)."""
    model = classifier.model
    keys = [lab.key for lab in classifier.labels]
    if label is not None and label not in keys:
        raise ValidationError(f"unknown class {label!r}; choose from {keys}", field="label", value=label, code="E_LABEL")
    from amulet_lab.model.fused import FusedNet

    if not isinstance(model, (AmuletNet, FusedNet)):
        raise ModelError(f"explain knows the CNN, feature-head, ensemble and fused models, not {type(model).__name__}",
                         code="E_EXPLAIN_ARCH", context={"arch": classifier.checkpoint.arch})
    start = time.perf_counter()
    with error_context("classifier.explain", model=classifier.fingerprint):
        decoded = classifier.decode(image, classifier.content_key(image))
        x = classifier.preprocess([decoded])
        from amulet_lab.threads import named_lock

        with named_lock(classifier._forward_lock):  # the model's one forward lock (see classifier)
            run = _explain_fused if isinstance(model, FusedNet) else _explain_net
            out = run(model, x, None if label is None else keys.index(label), classifier.temperature)
    target = out.pop("target")
    rgb = (x[0] * torch.tensor(classifier.spec.std).view(3, 1, 1) + torch.tensor(classifier.spec.mean).view(3, 1, 1))
    seconds = time.perf_counter() - start
    classifier.monitor.record("classifier.explain", seconds)
    size = getattr(decoded, "image", decoded).size
    return Explanation(label=keys[target], english=classifier.labels[target].english, photo_size=tuple(size),
                       image=(rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy(), seconds=seconds, **out)


# ---------------------------------------------------------------------------------------------- the models
def _explain_net(model: AmuletNet, x: torch.Tensor, target: int | None, temperature: float) -> dict[str, Any]:
    """An ``AmuletNet``: Grad-CAM of its CNN and/or the exact cells of its feature head."""
    with torch.no_grad():
        logits, _ = model.forward_with_distance(x)
    probs = torch.softmax(logits / temperature, 1)[0]
    c = int(probs.argmax()) if target is None else target
    size = x.shape[-1]
    out: dict[str, Any] = {"target": c, "probability": float(probs[c]), "parts": {}}
    if model.cnn is not None:
        out["parts"]["grad-cam"] = _convnet_cam(model.cnn, x, c, model.tta)
    if model.head is not None:
        head = model.head
        with torch.no_grad():
            contrib = head.fc.weight[c] * head.standardised(x)[0]
        cells, density = _cells(head.extract, x, contrib)
        out["cells"] = cells
        out["logit"] = float(contrib.sum() + head.fc.bias.detach()[c])
        out["unplaced"] = out["logit"] - float(sum(v.sum() for v in cells.values()))
        out["parts"]["cells"] = _unit(density)
    names = list(out["parts"])
    w = model.feature_weight
    mixed = sum((w if name == "cells" else 1 - w) * out["parts"][name] for name in names) if len(names) == 2 else \
        out["parts"][names[0]]
    out["heatmap"] = _unit(np.asarray(mixed, dtype=np.float32))
    out["method"] = {("grad-cam",): "Grad-CAM", ("cells",): "feature cells"}.get(
        tuple(names), f"Grad-CAM x {1 - w:.2g} + feature cells x {w:.2g}")
    assert out["heatmap"].shape == (size, size)
    return out


def _convnet_cam(cnn: ConvNet, x: torch.Tensor, c: int, tta: bool) -> np.ndarray:
    """Grad-CAM of class ``c`` on the last convolution's map (both flip views when ``tta``), at the input size."""
    xi = x
    if cnn.input_size is not None and x.shape[-2:] != (cnn.input_size, cnn.input_size):
        xi = F.interpolate(x, size=(cnn.input_size, cnn.input_size), mode="bilinear", align_corners=False, antialias=True)
    cams = []
    for flip in (False, True)[:2 if tta else 1]:
        with torch.no_grad():
            a = cnn.body[:-1](xi.flip(3) if flip else xi)  # the last conv_bn's output, before the last max-pool
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            score = cnn.fc(F.adaptive_avg_pool2d(cnn.body[-1](a), 1).flatten(1))[0, c]
            (grad,) = torch.autograd.grad(score, a)
        cam = (grad.mean((2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True)
        cams.append(cam.flip(3) if flip else cam)
    cam = F.relu(torch.stack(cams).mean(0))
    up = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return _unit(up[0, 0].numpy())


def _explain_fused(model: Any, x: torch.Tensor, target: int | None, temperature: float) -> dict[str, Any]:
    """A ``FusedNet``: Grad-CAM through its pretrained path (over the object crop, warped back onto the input)."""
    from amulet_lab.model.backbone import POOLED_DIM, TAPS

    with torch.no_grad():
        rgb = (x * model.in_std + model.in_mean).clamp(0, 1)
        crop = model.object_crop(rgb)
        views, maps = [], []
        for flip in (False, True):  # as FusedNet.view_features (the crop is 224 px: what backbone.pooled takes)
            m = model.backbone(model.backbone.normalise(crop.flip(3) if flip else crop))
            pooled = torch.cat([t for name in TAPS for t in (m[name].mean((2, 3)), m[name].amax((2, 3)))], 1)
            views.append((pooled.sign() * pooled.abs().pow(model.power), model.hand(x.flip(3) if flip else x)))
            maps.append(m)
        lp, _ = model.outputs(views)
    probs = torch.softmax(lp / temperature, 1)[0]
    c = int(probs.argmax()) if target is None else target
    w_cnn, w_hand = model.fc.weight.detach()[c, :POOLED_DIM], model.fc.weight.detach()[c, POOLED_DIM:]
    cams = []
    for flip, m in zip((False, True), maps):
        a = m["head"].detach().requires_grad_(True)
        with torch.enable_grad():
            pooled = torch.cat([t for name in TAPS for t in ((a if name == "head" else m[name]).mean((2, 3)),
                                                              (a if name == "head" else m[name]).amax((2, 3)))], 1)
            powered = pooled.sign() * pooled.abs().clamp_min(_EPS).pow(model.power)
            score = ((powered - model.cnn_mean) / model.cnn_std * model.block_weight * w_cnn).sum()
            (grad,) = torch.autograd.grad(score, a)
        cam = (grad.mean((2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True)
        cams.append(cam.flip(3) if flip else cam)
    cam = F.relu(torch.stack(cams).mean(0))
    heatmap = _unit(_uncrop(cam, model.crop_theta(rgb), x.shape[-1]))
    # The hand block's exact cells, as a bonus (not in the heatmap): the mean over both views, the mirror flipped back.
    cells: dict[str, np.ndarray] = {}
    logits = []
    for flip, (cnn_block, hand_block) in zip((False, True), views):
        with torch.no_grad():
            contrib = w_hand * (hand_block[0] - model.hand_mean) / model.hand_std
            logits.append(float(model.fc(model.joined(cnn_block, hand_block))[0, c]))
        view_cells, _ = _cells(model.hand, x.flip(3) if flip else x, contrib)
        for name, grid in view_cells.items():
            cells[name] = cells.get(name, 0) + 0.5 * (grid[:, ::-1] if flip else grid)
    logit = sum(logits) / 2
    return {"target": c, "probability": float(probs[c]), "heatmap": heatmap, "method": "Grad-CAM (pretrained path)",
            "parts": {"grad-cam": heatmap}, "cells": cells, "logit": logit,
            "unplaced": logit - float(sum(v.sum() for v in cells.values()))}


# ---------------------------------------------------------------------------------------------- the geometry
def _uncrop(cam: torch.Tensor, theta: torch.Tensor, size: int) -> np.ndarray:
    """A map over ``object_crop``'s square (theta: crop -> image, corners not aligned) onto the size x size input."""
    centres = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1  # pixel centres in [-1, 1]
    s, tx, ty = float(theta[0, 0, 0]), float(theta[0, 0, 2]), float(theta[0, 1, 2])
    u, v = (centres - tx) / s, (centres - ty) / s
    grid = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], -1).unsqueeze(0)  # (1, H, W, [x, y])
    sampled = F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    inside = (grid[0].abs() <= 1).all(-1)
    return (sampled * inside).numpy()


def _cells(hand: HandFeatures, x: torch.Tensor, contrib: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The grid features' contributions summed per cell, and their density over the input (cell / its pixels)."""
    cells = {}
    for name, (side, per_cell, _, _) in _GRIDS.items():
        start = _OFFSETS[name]
        block = contrib[start:start + FEATURE_GROUPS[name]].reshape(per_cell, side, side).sum(0)
        cells[name] = block.detach().numpy().astype(np.float64)
    with torch.no_grad():
        xw = x
        if x.shape[-1] != hand.work_size or x.shape[-2] != hand.work_size:
            xw = F.interpolate(x, size=(hand.work_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        theta, _, _ = hand.crop_theta(hand.foreground((xw * hand.in_std + hand.in_mean).clamp(0, 1)))
    size, work = x.shape[-1], hand.work_size
    centres = ((np.arange(size) + 0.5) * work / size - 0.5) * 2 / (work - 1) - 1  # corners aligned at the work size
    cols = ((centres - float(theta[0, 0, 2])) / float(theta[0, 0, 0]) + 1) / 2 * (_CROP - 1)
    rows = ((centres - float(theta[0, 1, 2])) / float(theta[0, 1, 1]) + 1) / 2 * (_CROP - 1)
    inside = ((rows >= -0.5) & (rows <= _CROP - 0.5))[:, None] & ((cols >= -0.5) & (cols <= _CROP - 0.5))[None, :]
    r_px, c_px = np.clip(np.rint(rows), 0, _CROP - 1), np.clip(np.rint(cols), 0, _CROP - 1)
    density = np.zeros((size, size))
    for name, (side, _, step, offset) in _GRIDS.items():
        ri = np.clip(((r_px - offset) // step).astype(int), 0, side - 1)
        ci = np.clip(((c_px - offset) // step).astype(int), 0, side - 1)
        ids = ri[:, None] * side + ci[None, :]
        counts = np.bincount(ids[inside], minlength=side * side)
        share = cells[name].ravel() / np.maximum(counts, 1)
        density += np.where(inside, share[ids], 0.0)
    return cells, density


def _unit(values: np.ndarray) -> np.ndarray:
    """The positive part scaled so that its maximum is 1 (all zeros stay zeros), float32."""
    pos = np.maximum(np.asarray(values, dtype=np.float64), 0)
    peak = pos.max() if pos.size else 0.0
    return (pos / peak if peak > 0 else pos).astype(np.float32)
