"""Hand-made colour, texture and shape features, computed in torch from the normalised model input.

They complement the CNN where data is scarce (a few dozen photos per class): a linear model on them
is hard to over-fit and sees global cues (silhouette, material colour) that a small CNN learns late.
Computing them from the same NCHW tensor the CNN gets keeps one cached input per image, batches for
free and keeps the whole model a single ``nn.Module`` in one checkpoint.

Per image:
- foreground mask: pixels far (in RGB) from the median border colour, i.e. background removal for
  photos on a plain backdrop; falls back to the whole frame when that leaves too little;
- colour: HSV marginal histograms (12 hue, 6 saturation, 6 value bins) of the foreground, RGB mean/std;
- texture: rotation-invariant uniform LBP histograms at radius 1 and 2 (10 bins each) on the
  foreground, gradient-orientation histograms (8 bins) in a 3x3 grid, mean gradient magnitude;
- shape: foreground share, bounding-box aspect and extent, width profile over 8 rows and height
  profile over 8 columns of the box (silhouette: arched, square, triangular ...), 4 log Hu moments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HandFeatures", "FEATURE_DIM"]

_H_BINS, _S_BINS, _V_BINS = 12, 6, 6
_GRID, _ORIENT = 3, 8
_PROFILE = 8
FEATURE_DIM = (_H_BINS + _S_BINS + _V_BINS + 6) + (10 * 2 + _GRID * _GRID * _ORIENT + 1) + (3 + 2 * _PROFILE + 4)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 1e-6, delta, torch.ones_like(delta))
    hr = ((g - b) / safe) % 6
    hg = (b - r) / safe + 2
    hb = (r - g) / safe + 4
    hue = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb)) / 6.0
    hue = torch.where(delta > 1e-6, hue, torch.zeros_like(hue))
    sat = torch.where(maxc > 1e-6, delta / torch.where(maxc > 1e-6, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return hue.clamp(0, 1 - 1e-6), sat.clamp(0, 1 - 1e-6), maxc.clamp(0, 1 - 1e-6)


def _weighted_hist(values: torch.Tensor, weights: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-image histogram of values in [0, 1) weighted by ``weights`` (N, P) -> (N, bins), sums to 1."""
    idx = (values * bins).long().clamp(0, bins - 1)
    out = torch.zeros(values.shape[0], bins, dtype=values.dtype, device=values.device)
    out.scatter_add_(1, idx, weights)
    return out / out.sum(1, keepdim=True).clamp_min(1e-6)


def _lbp_hist(gray: torch.Tensor, mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Rotation-invariant uniform LBP (9 uniform codes + 1 other) histogram over the mask."""
    n, h, w = gray.shape
    r = radius
    center = gray[:, r:h - r, r:w - r]
    offsets = [(-r, -r), (-r, 0), (-r, r), (0, r), (r, r), (r, 0), (r, -r), (0, -r)]
    bits = []
    for dy, dx in offsets:
        nb = gray[:, r + dy:h - r + dy, r + dx:w - r + dx]
        bits.append((nb >= center + 1e-3).float())
    stacked = torch.stack(bits, 1)  # N, 8, h', w'
    ones = stacked.sum(1)
    transitions = (stacked - stacked.roll(1, dims=1)).abs().sum(1)
    code = torch.where(transitions <= 2, ones, torch.full_like(ones, 9.0))
    m = mask[:, r:h - r, r:w - r].reshape(n, -1)
    return _weighted_hist(code.reshape(n, -1) / 10.0 + 0.05 / 10, m, 10)


def _hu_moments(mask: torch.Tensor) -> torch.Tensor:
    """log|Hu| moments 1-4 of a soft mask (N, H, W)."""
    n, h, w = mask.shape
    ys = torch.linspace(-1, 1, h, dtype=mask.dtype).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=mask.dtype).view(1, 1, w)
    m00 = mask.sum((1, 2)).clamp_min(1e-6)
    cx = (mask * xs).sum((1, 2)) / m00
    cy = (mask * ys).sum((1, 2)) / m00
    dx = xs - cx.view(n, 1, 1)
    dy = ys - cy.view(n, 1, 1)

    def mu(p: int, q: int) -> torch.Tensor:
        return (mask * dx**p * dy**q).sum((1, 2))

    def eta(p: int, q: int) -> torch.Tensor:
        return mu(p, q) / m00 ** (1 + (p + q) / 2)

    n20, n02, n11 = eta(2, 0), eta(0, 2), eta(1, 1)
    n30, n03, n21, n12 = eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    h1 = n20 + n02
    h2 = (n20 - n02) ** 2 + 4 * n11**2
    h3 = (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2
    h4 = (n30 + n12) ** 2 + (n21 + n03) ** 2
    hu = torch.stack([h1, h2, h3, h4], 1)
    return torch.sign(hu) * torch.log10(hu.abs() + 1e-10) / 10.0


class HandFeatures(nn.Module):
    """Fixed (not learned) feature extractor: normalised NCHW batch -> (N, FEATURE_DIM) features."""

    def __init__(self, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25), work_size: int = 96):
        super().__init__()
        self.work_size = int(work_size)
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1), persistent=False)

    def foreground(self, rgb: torch.Tensor) -> torch.Tensor:
        """Soft foreground mask (N, H, W) in {0, 1}: far from the median border colour."""
        n, _, h, w = rgb.shape
        b = max(2, h // 32)
        border = torch.cat(
            [rgb[:, :, :b, :].reshape(n, 3, -1), rgb[:, :, -b:, :].reshape(n, 3, -1),
             rgb[:, :, :, :b].reshape(n, 3, -1), rgb[:, :, :, -b:].reshape(n, 3, -1)], 2
        )
        bg = border.median(2).values.view(n, 3, 1, 1)
        spread = (border - bg.view(n, 3, 1)).norm(dim=1).quantile(0.9, dim=1).view(n, 1, 1)
        dist = (rgb - bg).norm(dim=1)
        thr = torch.clamp(spread * 1.5, min=0.12, max=0.35)
        mask = (dist > thr).float()
        # Close small holes and drop specks: average pooling then threshold.
        mask = (F.avg_pool2d(mask.unsqueeze(1), 5, stride=1, padding=2).squeeze(1) > 0.5).float()
        share = mask.mean((1, 2), keepdim=True)
        return torch.where(share < 0.05, torch.ones_like(mask), mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a normalised batch."""
        if x.shape[-1] != self.work_size:
            x = F.interpolate(x, size=(self.work_size, self.work_size), mode="bilinear", align_corners=False, antialias=True)
        rgb = (x * self.in_std + self.in_mean).clamp(0, 1)
        n, _, h, w = rgb.shape
        mask = self.foreground(rgb)
        flat_mask = mask.reshape(n, -1)
        # colour
        hue, sat, val = _rgb_to_hsv(rgb)
        colour = [
            _weighted_hist(hue.reshape(n, -1), flat_mask * sat.reshape(n, -1).clamp_min(0.05), _H_BINS),
            _weighted_hist(sat.reshape(n, -1), flat_mask, _S_BINS),
            _weighted_hist(val.reshape(n, -1), flat_mask, _V_BINS),
        ]
        msum = flat_mask.sum(1, keepdim=True).clamp_min(1)
        px = rgb.reshape(n, 3, -1)
        cmean = (px * flat_mask.unsqueeze(1)).sum(2) / msum
        cstd = (((px - cmean.unsqueeze(2)) ** 2 * flat_mask.unsqueeze(1)).sum(2) / msum).sqrt()
        colour += [cmean, cstd]
        # texture
        gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
        texture = [_lbp_hist(gray, mask, 1), _lbp_hist(gray, mask, 2)]
        grad = F.conv2d(gray.unsqueeze(1), self.sobel, padding=1)
        gx, gy = grad[:, 0], grad[:, 1]
        mag = (gx**2 + gy**2).sqrt() * mask
        angle = (torch.atan2(gy, gx) % math.pi) / math.pi  # unsigned orientation in [0, 1)
        obin = (angle * _ORIENT).long().clamp(0, _ORIENT - 1)
        onehot = F.one_hot(obin, _ORIENT).permute(0, 3, 1, 2).float() * mag.unsqueeze(1)
        cells = F.adaptive_avg_pool2d(onehot, _GRID).reshape(n, -1)
        texture.append(cells / cells.sum(1, keepdim=True).clamp_min(1e-6))
        texture.append((mag.reshape(n, -1).sum(1, keepdim=True) / msum) * 4)
        # shape
        rows = mask.amax(2)  # N, H: row has foreground
        cols = mask.amax(1)
        idx_h = torch.arange(h, dtype=x.dtype).view(1, h)
        idx_w = torch.arange(w, dtype=x.dtype).view(1, w)
        top = torch.where(rows > 0, idx_h, torch.full_like(idx_h, h)).amin(1)
        bottom = torch.where(rows > 0, idx_h, torch.full_like(idx_h, -1)).amax(1)
        left = torch.where(cols > 0, idx_w, torch.full_like(idx_w, w)).amin(1)
        right = torch.where(cols > 0, idx_w, torch.full_like(idx_w, -1)).amax(1)
        bh = (bottom - top + 1).clamp_min(1)
        bw = (right - left + 1).clamp_min(1)
        share = mask.mean((1, 2))
        aspect = torch.log(bh / bw)
        extent = mask.sum((1, 2)) / (bh * bw)
        # Width / height profiles inside the box, via sampling the mask on a normalised grid.
        theta = torch.zeros(n, 2, 3, dtype=x.dtype)
        theta[:, 0, 0] = bw / w
        theta[:, 0, 2] = (left + right) / (w - 1) - 1
        theta[:, 1, 1] = bh / h
        theta[:, 1, 2] = (top + bottom) / (h - 1) - 1
        grid = F.affine_grid(theta, (n, 1, 32, 32), align_corners=True)
        boxed = F.grid_sample(mask.unsqueeze(1), grid, align_corners=True).squeeze(1)
        row_prof = F.adaptive_avg_pool1d(boxed.mean(2).unsqueeze(1), _PROFILE).squeeze(1)
        col_prof = F.adaptive_avg_pool1d(boxed.mean(1).unsqueeze(1), _PROFILE).squeeze(1)
        shape = [torch.stack([share, aspect, extent], 1), row_prof, col_prof, _hu_moments(mask)]
        return torch.cat(colour + texture + shape, 1)
