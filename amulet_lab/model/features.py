"""Hand-made texture, relief and shape features, computed in torch from the normalised model input.

They carry the model where data is scarce (a few dozen photos per class): a linear model on them is
hard to over-fit. Computing them from the same NCHW tensor the CNN gets keeps one cached input per
image, batches for free and keeps the whole model a single ``nn.Module`` in one checkpoint.

Per image, at ``work_size`` (128 px):
- foreground mask: pixels far (in RGB) from the median border colour, i.e. background removal for
  photos on a plain backdrop; falls back to the whole frame when that leaves too little;
- the **object crop**: the mask's bounding box resampled to 96 x 96, so that the features below
  describe the amulet whatever its position and size in the photo (the largest single gain);
- relief (on the crop): HOG, 9 unsigned orientations (soft-binned) in a 4x4 grid, each cell
  normalised, square-rooted; rotation-invariant uniform LBP at radius 2 in a 3x3 grid; an 8x8
  grey thumbnail standardised per image (the mould's layout);
- texture: uniform LBP histograms at radius 1, 2 and 3 over the whole foreground;
- shape: foreground share, box aspect and extent, width and height profiles (16 each) of the
  cropped mask (arched, square, triangular ...), 4 log Hu moments.
Histograms are square-rooted (the Hellinger map), which suits a linear model better than raw counts.

What was measured and left out (5-fold CV on the real amulet6 photos, linear model): colour
histograms lowered accuracy (0.86 -> 0.83: material colour and lighting vary within a class);
horizontal-flip views and test-time flips did not help (inscriptions are not mirror-symmetric); finer
HOG grids and a second HOG scale were no better. The figures are in the README.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HandFeatures", "FEATURE_DIM", "FEATURE_GROUPS"]

_CROP = 96
_HOG_GRID, _ORIENT = 4, 9
_LBP_GRID = 3
_THUMB = 8
_PROFILE = 16
_LBP_BINS = 10  # 9 rotation-invariant uniform codes + 1 for the rest

#: feature group -> width, in the order of the feature vector
FEATURE_GROUPS: dict[str, int] = {
    "hog": _HOG_GRID * _HOG_GRID * _ORIENT,
    "lbp_grid": _LBP_GRID * _LBP_GRID * _LBP_BINS,
    "thumbnail": _THUMB * _THUMB,
    "lbp": 3 * _LBP_BINS,
    "shape": 3 + 2 * _PROFILE + 4,
}
FEATURE_DIM = sum(FEATURE_GROUPS.values())


def _lbp_codes(gray: torch.Tensor, radius: int) -> torch.Tensor:
    """Rotation-invariant uniform LBP codes 0..9 (N, H-2r, W-2r) of a grey batch (N, H, W)."""
    _, h, w = gray.shape
    r = radius
    # The small margin keeps flat regions (JPEG-smoothed backgrounds) from flickering between codes.
    center = gray[:, r:h - r, r:w - r] + 1e-3
    offsets = [(-r, -r), (-r, 0), (-r, r), (0, r), (r, r), (r, 0), (r, -r), (0, -r)]
    # Booleans, not floats: the same integer codes at about half the cost (measured, 1 thread).
    bits = torch.stack([gray[:, r + dy:h - r + dy, r + dx:w - r + dx] >= center for dy, dx in offsets], 1)
    ones = bits.sum(1)
    transitions = (bits != bits.roll(1, dims=1)).sum(1)
    return torch.where(transitions <= 2, ones, torch.full_like(ones, 9))


def _lbp_hist(gray: torch.Tensor, mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square-rooted LBP histogram over the mask (N, 10)."""
    n, h, w = gray.shape
    r = radius
    codes = _lbp_codes(gray, r).reshape(n, -1)
    weights = mask[:, r:h - r, r:w - r].reshape(n, -1)
    hist = torch.zeros(n, _LBP_BINS, dtype=gray.dtype).scatter_add_(1, codes, weights)
    return (hist / hist.sum(1, keepdim=True).clamp_min(1e-6)).sqrt()


def _lbp_grid(gray: torch.Tensor, grid: int, radius: int) -> torch.Tensor:
    """Square-rooted LBP histograms in a ``grid`` x ``grid`` layout (N, grid*grid*10)."""
    n = gray.shape[0]
    onehot = F.one_hot(_lbp_codes(gray, radius), _LBP_BINS).permute(0, 3, 1, 2).to(gray.dtype)
    return F.adaptive_avg_pool2d(onehot, grid).reshape(n, -1).sqrt()


def _hog(gray: torch.Tensor, sobel: torch.Tensor, grid: int, orient: int) -> torch.Tensor:
    """Magnitude-weighted, soft-binned unsigned orientation histograms per cell, each cell normalised, square-rooted."""
    n = gray.shape[0]
    g = F.conv2d(gray.unsqueeze(1), sobel, padding=1)
    gx, gy = g[:, 0], g[:, 1]
    mag = (gx**2 + gy**2).sqrt()
    pos = (torch.atan2(gy, gx) % math.pi) / math.pi * orient
    lo = pos.floor()
    frac = (pos - lo).unsqueeze(1)
    lo_bin = lo.long() % orient
    onehot = F.one_hot(lo_bin, orient).permute(0, 3, 1, 2).to(gray.dtype) * (1 - frac)
    onehot = onehot + F.one_hot((lo_bin + 1) % orient, orient).permute(0, 3, 1, 2).to(gray.dtype) * frac
    cells = F.adaptive_avg_pool2d(onehot * mag.unsqueeze(1), grid)
    cells = cells / cells.sum(1, keepdim=True).clamp_min(1e-6)
    return cells.reshape(n, -1).sqrt()


def _hu_moments(mask: torch.Tensor) -> torch.Tensor:
    """log|Hu| moments 1-4 of a mask (N, H, W)."""
    n, h, w = mask.shape
    ys = torch.linspace(-1, 1, h, dtype=mask.dtype).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=mask.dtype).view(1, 1, w)
    m00 = mask.sum((1, 2)).clamp_min(1e-6)
    cx = (mask * xs).sum((1, 2)) / m00
    cy = (mask * ys).sum((1, 2)) / m00
    dx = xs - cx.view(n, 1, 1)
    dy = ys - cy.view(n, 1, 1)

    def eta(p: int, q: int) -> torch.Tensor:
        return (mask * dx**p * dy**q).sum((1, 2)) / m00 ** (1 + (p + q) / 2)

    n20, n02, n11 = eta(2, 0), eta(0, 2), eta(1, 1)
    n30, n03, n21, n12 = eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    h1 = n20 + n02
    h2 = (n20 - n02) ** 2 + 4 * n11**2
    h3 = (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2
    h4 = (n30 + n12) ** 2 + (n21 + n03) ** 2
    hu = torch.stack([h1, h2, h3, h4], 1)
    return torch.sign(hu) * torch.log10(hu.abs() + 1e-10) / 10.0


def _bounding_box(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, bottom, left, right) pixel indices of each mask's foreground (N,) each."""
    _, h, w = mask.shape
    rows = mask.amax(2)
    cols = mask.amax(1)
    idx_h = torch.arange(h, dtype=mask.dtype).view(1, h)
    idx_w = torch.arange(w, dtype=mask.dtype).view(1, w)
    top = torch.where(rows > 0, idx_h, torch.full_like(idx_h, h)).amin(1)
    bottom = torch.where(rows > 0, idx_h, torch.full_like(idx_h, -1)).amax(1)
    left = torch.where(cols > 0, idx_w, torch.full_like(idx_w, w)).amin(1)
    right = torch.where(cols > 0, idx_w, torch.full_like(idx_w, -1)).amax(1)
    return top, bottom, left, right


class HandFeatures(nn.Module):
    """Fixed (not learned) feature extractor: normalised NCHW batch -> (N, FEATURE_DIM) features."""

    def __init__(self, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25), work_size: int = 128):
        super().__init__()
        self.work_size = int(work_size)
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1), persistent=False)

    def foreground(self, rgb: torch.Tensor) -> torch.Tensor:
        """Foreground mask (N, H, W) in {0, 1} of an RGB batch in [0, 1]: far from the median border colour."""
        n, _, h, w = rgb.shape
        b = max(2, h // 32)
        border = torch.cat(
            [rgb[:, :, :b, :].reshape(n, 3, -1), rgb[:, :, -b:, :].reshape(n, 3, -1),
             rgb[:, :, :, :b].reshape(n, 3, -1), rgb[:, :, :, -b:].reshape(n, 3, -1)], 2
        )
        bg = border.median(2).values.view(n, 3, 1, 1)
        # Euclidean distances over the channel axis written out: ``Tensor.norm(dim=1)`` over a strided axis
        # was 30 % of the whole feature extraction (measured with torch.profiler, 1 thread).
        spread = (border - bg.view(n, 3, 1)).square().sum(1).sqrt().quantile(0.9, dim=1).view(n, 1, 1)
        dist = (rgb - bg).square().sum(1).sqrt()
        thr = torch.clamp(spread * 1.5, min=0.12, max=0.35)
        mask = (dist > thr).float()
        # Close small holes and drop specks: average pooling then threshold.
        mask = (F.avg_pool2d(mask.unsqueeze(1), 5, stride=1, padding=2).squeeze(1) > 0.5).float()
        share = mask.mean((1, 2), keepdim=True)
        return torch.where(share < 0.05, torch.ones_like(mask), mask)

    def crop(self, images: torch.Tensor, mask: torch.Tensor, size: int = _CROP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images`` (N, C, H, W) cropped to the mask's bounding box (4 % margin) at ``size``; also box height and width."""
        n, c = images.shape[:2]
        theta, bh, bw = self.crop_theta(mask)
        grid = F.affine_grid(theta.to(images.dtype), (n, c, size, size), align_corners=True)
        return F.grid_sample(images, grid, align_corners=True, padding_mode="border"), bh, bw

    def crop_theta(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 2, 3) affine maps of ``crop`` (crop -> image coordinates, corners aligned), box heights and widths."""
        n, h, w = mask.shape
        top, bottom, left, right = _bounding_box(mask)
        bh = (bottom - top + 1).clamp_min(1)
        bw = (right - left + 1).clamp_min(1)
        theta = torch.zeros(n, 2, 3, dtype=mask.dtype)
        theta[:, 0, 0] = bw / w * 1.04
        theta[:, 0, 2] = (left + right) / (w - 1) - 1
        theta[:, 1, 1] = bh / h * 1.04
        theta[:, 1, 2] = (top + bottom) / (h - 1) - 1
        return theta, bh, bw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a normalised batch."""
        if x.shape[-1] != self.work_size or x.shape[-2] != self.work_size:
            x = F.interpolate(x, size=(self.work_size, self.work_size), mode="bilinear", align_corners=False, antialias=True)
        rgb = (x * self.in_std + self.in_mean).clamp(0, 1)
        n = rgb.shape[0]
        mask = self.foreground(rgb)
        gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
        # One resampling for the grey crop and the mask crop, so they stay aligned.
        cropped, bh, bw = self.crop(torch.stack([gray, mask], 1), mask)
        cgray, cmask = cropped[:, 0], (cropped[:, 1] > 0.5).to(x.dtype)
        thumb = F.adaptive_avg_pool2d(cgray.unsqueeze(1), _THUMB).reshape(n, -1)
        thumb = (thumb - thumb.mean(1, keepdim=True)) / thumb.std(1, keepdim=True).clamp_min(1e-3)
        relief = [_hog(cgray, self.sobel, _HOG_GRID, _ORIENT), _lbp_grid(cgray, _LBP_GRID, 2), thumb]
        texture = [_lbp_hist(gray, mask, r) for r in (1, 2, 3)]
        row_prof = F.adaptive_avg_pool1d(cmask.mean(2).unsqueeze(1), _PROFILE).squeeze(1)
        col_prof = F.adaptive_avg_pool1d(cmask.mean(1).unsqueeze(1), _PROFILE).squeeze(1)
        extent = mask.sum((1, 2)) / (bh * bw)  # the share of its box the piece fills: 1 square, pi/4 round
        box = torch.stack([mask.mean((1, 2)), torch.log(bh / bw), extent], 1)
        shape = [box, row_prof, col_prof, _hu_moments(mask)]
        return torch.cat(relief + texture + shape, 1)
