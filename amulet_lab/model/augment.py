"""Training-time augmentation: random views of a uint8 batch as one affine warp plus colour ops in torch.

Every random draw comes from the generator passed in, in a fixed order: the same generator state gives
the same views (the bundled model's rebuild depends on it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from amulet_lab.images import PreprocessSpec

__all__ = ["augment"]


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
