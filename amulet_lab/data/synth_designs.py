"""The designs of the synthetic amulets: silhouettes, relief motifs, and one front and back design per class.

Drawing only (Pillow ``ImageDraw`` calls on "L" images); ``synth_render`` turns a design into a photo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Pillow and numpy load only when something is rendered
    import numpy as np
    from PIL import ImageDraw

__all__ = ["CLASS_DESIGNS", "draw_silhouette"]


# --------------------------------------------------------------------------------------------- shapes
# Silhouettes: each draws the piece's outline, filled, into an "L" image inside box (x0, y0, x1, y1).

def _poly_tall_pointed(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """A tall ogive: pointed top, straight-ish flanks, round bottom (phra_sivali)."""
    x0, y0, x1, y1 = box
    cx, hw, h = (x0 + x1) / 2, (x1 - x0) / 2, y1 - y0
    right = []
    for i in range(41):
        u = i / 40
        if u <= 0.8:
            half = hw * math.sin(math.pi / 2 * min(1.0, u / 0.62)) ** 0.8
        else:
            half = hw * math.sqrt(max(0.0, 1 - ((u - 0.8) / 0.2) ** 2))
        right.append((cx + half, y0 + u * h))
    return right + [(2 * cx - x, y) for x, y in reversed(right)]


def _poly_triangle(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """A triangle with a slightly bowed base (prok_bodhi: the bodhi-leaf point upward)."""
    x0, y0, x1, y1 = box
    cx = (x0 + x1) / 2
    base = [(x1 - (x1 - x0) * i / 12, y1 - (y1 - y0) * 0.04 * math.sin(math.pi * i / 12)) for i in range(13)]
    return [(cx, y0)] + base


def _poly_hexagon(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """A hexagon with flat top and bottom, taller than wide (waek_man)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return [(x0 + 0.25 * w, y0), (x1 - 0.25 * w, y0), (x1, y0 + h / 2), (x1 - 0.25 * w, y1), (x0 + 0.25 * w, y1),
            (x0, y0 + h / 2)]


def _poly_arched(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """A rectangle whose top is a wide arch (somdej)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    arch = 0.22 * h
    top = [(x0 + w * i / 20, y0 + arch * (1 - math.sin(math.pi * i / 20))) for i in range(21)]
    return top + [(x1, y1), (x0, y1)]


def draw_silhouette(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
                     fill: int = 255, width: int = 0) -> None:
    """Draw a silhouette filled (width 0) or as an outline of ``width`` pixels."""
    kwargs: dict[str, Any] = {"fill": fill} if width == 0 else {"outline": fill, "width": width}
    if shape == "oval":
        draw.ellipse(box, **kwargs)
    elif shape == "square":
        radius = int(0.06 * (box[2] - box[0]))
        draw.rounded_rectangle(box, radius=radius, **kwargs)
    else:
        points = {"tall_pointed": _poly_tall_pointed, "triangle": _poly_triangle, "hexagon": _poly_hexagon,
                  "arched": _poly_arched}[shape](box)
        if width == 0:
            draw.polygon(points, fill=fill)
        else:
            draw.line(points + points[:1], fill=fill, width=width, joint="curve")


# --------------------------------------------------------------------------------------------- motifs
# Motifs draw raised relief (bright) into a height layer; ``rng`` jitters proportions a little.

def _seated_figure(d: ImageDraw.ImageDraw, cx: float, base: float, s: float, rng: np.random.Generator,
                   v: int = 230) -> None:
    """A seated Buddha: crossed legs, torso, head and topknot; ``s`` is its height in pixels."""
    j = lambda a: a * (1 + rng.uniform(-0.07, 0.07))  # noqa: E731
    legs_w, legs_h = j(1.0 * s), j(0.24 * s)
    d.ellipse((cx - legs_w / 2, base - legs_h, cx + legs_w / 2, base), fill=v)
    torso_top = base - j(0.66 * s)
    shoulder, waist = j(0.25 * s), j(0.2 * s)
    d.polygon([(cx - waist, base - legs_h * 0.5), (cx + waist, base - legs_h * 0.5),
               (cx + shoulder, torso_top + 0.08 * s), (cx + shoulder * 0.6, torso_top),
               (cx - shoulder * 0.6, torso_top), (cx - shoulder, torso_top + 0.08 * s)], fill=v)
    # Arms: from the shoulders down to the lap.
    for side in (-1, 1):
        d.line([(cx + side * shoulder * 0.95, torso_top + 0.08 * s), (cx + side * shoulder * 1.05, base - legs_h * 0.9),
                (cx + side * 0.05 * s, base - legs_h * 0.8)], fill=v, width=max(2, int(0.07 * s)), joint="curve")
    head_r = j(0.12 * s)
    d.ellipse((cx - head_r, torso_top - 1.9 * head_r, cx + head_r, torso_top + 0.1 * head_r), fill=v)
    d.polygon([(cx - head_r * 0.35, torso_top - 1.75 * head_r), (cx + head_r * 0.35, torso_top - 1.75 * head_r),
               (cx, torso_top - 2.6 * head_r)], fill=v)
    # Hands in the lap: a small darker oval reads as the fold between arms and legs.
    d.ellipse((cx - 0.14 * s, base - legs_h * 1.05, cx + 0.14 * s, base - legs_h * 0.55), fill=max(0, v - 60))


def _throne(d: ImageDraw.ImageDraw, cx: float, top: float, bottom: float, width: float, steps: int,
            v: int = 210) -> None:
    """A layered throne base: ``steps`` bars widening downward."""
    step_h = (bottom - top) / steps
    for i in range(steps):
        w = width * (0.55 + 0.45 * (i + 1) / steps)
        y = top + i * step_h
        d.rounded_rectangle((cx - w / 2, y + step_h * 0.15, cx + w / 2, y + step_h * 0.85),
                            radius=max(1, int(step_h * 0.3)), fill=v)


def _leaves(d: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, leaf: float, rng: np.random.Generator,
            count: int = 9, v: int = 235) -> None:
    """``count`` pointed leaves along an arc above a figure (the nine bodhi leaves)."""
    for i in range(count):
        a = math.pi * (0.1 + 0.8 * i / (count - 1)) + rng.uniform(-0.04, 0.04)
        x, y = cx - radius * math.cos(a), cy - radius * math.sin(a)
        pts = [(x, y - leaf), (x + leaf * 0.6, y), (x, y + leaf * 0.9), (x - leaf * 0.6, y)]
        d.polygon(pts, fill=v)
        d.line([(x, y + leaf * 0.9), (x, y + leaf * 1.4)], fill=v, width=max(1, int(leaf * 0.15)))


def _curtain(d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], folds: int, width: int,
             v: int = 225) -> None:
    """Parted curtain lines: folds hang from the top corners and sweep outward (waek man, 'parting the curtain')."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    for side in (-1, 1):
        for k in range(folds):
            start = 0.5 + side * (0.05 + 0.06 * k)
            pts = []
            for i in range(13):
                u = i / 12
                x = start + side * (0.42 - 0.06 * k) * math.sin(math.pi / 2 * u) * (1 - 0.2 * k / folds)
                pts.append((x0 + x * w, y0 + u * h))
            d.line(pts, fill=v, width=width, joint="curve")


def _bust(d: ImageDraw.ImageDraw, cx: float, bottom: float, s: float, rng: np.random.Generator, v: int = 230) -> None:
    """A portrait bust of a monk: wide shoulders, neck and a large bald head with ears."""
    shoulders_w = s * rng.uniform(0.95, 1.1)
    d.ellipse((cx - shoulders_w / 2, bottom - 0.42 * s, cx + shoulders_w / 2, bottom + 0.3 * s), fill=v)
    head_r = s * rng.uniform(0.2, 0.24)
    head_cy = bottom - 0.42 * s - head_r * 0.85
    d.rectangle((cx - head_r * 0.45, head_cy, cx + head_r * 0.45, bottom - 0.35 * s), fill=v)
    d.ellipse((cx - head_r, head_cy - head_r * 1.15, cx + head_r, head_cy + head_r * 1.05), fill=min(255, v + 20))
    for side in (-1, 1):
        ex = cx + side * head_r * 1.02
        d.ellipse((ex - head_r * 0.18, head_cy - head_r * 0.2, ex + head_r * 0.18, head_cy + head_r * 0.35), fill=v)
    # The robe's diagonal fold over one shoulder.
    d.line([(cx - shoulders_w * 0.35, bottom - 0.3 * s), (cx + shoulders_w * 0.15, bottom + 0.05 * s)],
           fill=max(0, v - 70), width=max(2, int(s * 0.03)))


def _standing_figure(d: ImageDraw.ImageDraw, cx: float, top: float, bottom: float, rng: np.random.Generator,
                     v: int = 230) -> None:
    """A walking monk with an umbrella staff over the shoulder (Phra Sivali's usual pose)."""
    h = bottom - top
    head_r = h * rng.uniform(0.075, 0.09)
    d.ellipse((cx - head_r, top, cx + head_r, top + 2 * head_r), fill=v)
    body_top = top + 2 * head_r
    d.polygon([(cx - h * 0.1, body_top), (cx + h * 0.1, body_top), (cx + h * 0.17, bottom - h * 0.05),
               (cx - h * 0.13, bottom - h * 0.05)], fill=v)
    d.rectangle((cx - h * 0.08, bottom - h * 0.06, cx - h * 0.01, bottom), fill=v)
    d.rectangle((cx + h * 0.03, bottom - h * 0.06, cx + h * 0.1, bottom), fill=v)
    staff_x = cx - h * 0.2
    d.line([(staff_x, top + h * 0.08), (staff_x + h * 0.07, bottom)], fill=v, width=max(2, int(h * 0.025)))
    d.chord((staff_x - h * 0.14, top - h * 0.04, staff_x + h * 0.14, top + h * 0.16), 180, 360, fill=v)


def _medallion(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, rng: np.random.Generator,
               v: int = 230) -> None:
    """A round medallion: two rings, radial rays and a small seated figure in the middle."""
    width = max(2, int(r * 0.06))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=v, width=width)
    d.ellipse((cx - 0.78 * r, cy - 0.78 * r, cx + 0.78 * r, cy + 0.78 * r), outline=v, width=max(1, width // 2))
    rays = int(rng.integers(12, 20))
    for i in range(rays):
        a = 2 * math.pi * i / rays
        d.line([(cx + 0.82 * r * math.cos(a), cy + 0.82 * r * math.sin(a)),
                (cx + 0.96 * r * math.cos(a), cy + 0.96 * r * math.sin(a))], fill=v, width=max(1, width // 2))
    _seated_figure(d, cx, cy + 0.55 * r, 1.0 * r, rng, v)


def _glyph_rows(d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rows: int,
                rng: np.random.Generator, v: int = 255, per_row: tuple[int, int] = (4, 7)) -> None:
    """Rows of Thai-looking glyphs (a loop and a stroke each): an inscription."""
    x0, y0, x1, y1 = box
    row_h = (y1 - y0) / rows
    for r in range(rows):
        n = int(rng.integers(per_row[0], per_row[1] + 1))
        cell = (x1 - x0) / n
        gy = y0 + r * row_h + row_h * 0.5
        size = min(cell, row_h) * 0.32
        width = max(1, int(size * 0.35))
        for c in range(n):
            gx = x0 + (c + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
            loop = size * 0.38
            d.ellipse((gx - size * 0.5 - loop, gy + size * 0.3 - loop, gx - size * 0.5 + loop, gy + size * 0.3 + loop),
                      outline=v, width=width)
            kind = int(rng.integers(0, 3))
            if kind == 0:
                d.line([(gx - size * 0.5 + loop, gy + size * 0.3), (gx + size * 0.4, gy - size * 0.8)], fill=v,
                       width=width)
            elif kind == 1:
                d.arc((gx - size * 0.6, gy - size, gx + size * 0.6, gy + size), 200, 360, fill=v, width=width)
            else:
                d.line([(gx - size * 0.1, gy - size), (gx + size * 0.1, gy + size)], fill=v, width=width)


def _yantra(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, rng: np.random.Generator, v: int = 255) -> None:
    """A yantra-like mark: a loop with a long descending stroke and side hooks (backs of prok bodhi)."""
    width = max(2, int(r * 0.08))
    d.ellipse((cx - r * 0.35, cy - r, cx + r * 0.35, cy - r * 0.4), outline=v, width=width)
    d.line([(cx, cy - r * 0.4), (cx, cy + r * 0.8)], fill=v, width=width)
    for side in (-1, 1):
        d.arc((cx + side * r * 0.2 - r * 0.45, cy - r * 0.2, cx + side * r * 0.2 + r * 0.45, cy + r * 0.5),
              0 if side > 0 else 180, 180 if side > 0 else 360, fill=v, width=width)
    d.line([(cx - r * 0.6, cy + r * 0.8), (cx + r * 0.6, cy + r * 0.8)], fill=v, width=width)


# --------------------------------------------------------------------------------------------- classes
# One entry per class key: (silhouette, width/height aspect range, front motif, back motif).

def _front_sivali(d, box, rng):
    x0, y0, x1, y1 = box
    cx, h = (x0 + x1) / 2, y1 - y0
    _standing_figure(d, cx + rng.uniform(-0.03, 0.03) * h, y0 + 0.05 * h, y1 - 0.04 * h, rng)


def _back_sivali(d, box, rng):
    x0, y0, x1, y1 = box
    h = y1 - y0
    _glyph_rows(d, (x0 + 0.15 * (x1 - x0), y0 + 0.35 * h, x1 - 0.15 * (x1 - x0), y0 + 0.7 * h), 2, rng,
                per_row=(2, 3))


def _front_portrait(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _bust(d, (x0 + x1) / 2, y1 - 0.18 * h, 0.8 * w, rng)
    _glyph_rows(d, (x0 + 0.1 * w, y1 - 0.16 * h, x1 - 0.1 * w, y1 - 0.02 * h), 1, rng, v=200)


def _back_portrait(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _glyph_rows(d, (x0 + 0.08 * w, y0 + 0.02 * h, x1 - 0.08 * w, y0 + 0.22 * h), 1, rng)
    cx, cy, r = (x0 + x1) / 2, y0 + 0.55 * h, 0.27 * w
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(2, int(r * 0.08)))
    _yantra(d, cx, cy, r * 0.7, rng)
    _glyph_rows(d, (x0 + 0.08 * w, y1 - 0.2 * h, x1 - 0.08 * w, y1 - 0.02 * h), 1, rng)


def _front_bodhi(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    base = y1 - 0.1 * h
    fig = 0.36 * h
    _seated_figure(d, cx, base, fig, rng)
    _leaves(d, cx, base - 0.58 * fig, 0.22 * w + 0.1 * h, 0.05 * h, rng)


def _back_bodhi(d, box, rng):
    x0, y0, x1, y1 = box
    h = y1 - y0
    _yantra(d, (x0 + x1) / 2, y0 + 0.62 * h, 0.22 * h, rng)


def _front_somdej(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    steps = int(rng.integers(3, 7))
    throne_top = y1 - 0.36 * h
    _throne(d, cx, throne_top, y1 - 0.05 * h, 0.85 * w, steps)
    _seated_figure(d, cx, throne_top, 0.4 * h, rng)


def _back_somdej(d, box, rng):
    # Somdej backs are plain: only a faint round stamp, sometimes.
    if rng.random() < 0.5:
        x0, y0, x1, y1 = box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 0.1 * (x1 - x0)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=170, width=max(1, int(r * 0.15)))


def _front_waek(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _curtain(d, box, int(rng.integers(2, 4)), max(2, int(w * 0.025)))
    _seated_figure(d, (x0 + x1) / 2, y1 - 0.12 * h, 0.42 * h, rng)


def _back_waek(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    s = 0.14 * w
    cx, cy = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * w, (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * h
    d.rectangle((cx - s, cy - s, cx + s, cy + s), outline=180, width=max(1, int(s * 0.12)))


def _front_nong(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _medallion(d, (x0 + x1) / 2, y0 + 0.5 * h, 0.36 * min(w, h), rng)


def _back_nong(d, box, rng):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    _glyph_rows(d, (x0 + 0.12 * w, y0 + 0.2 * h, x1 - 0.12 * w, y1 - 0.2 * h), int(rng.integers(3, 5)), rng)


#: One entry per class key: (silhouette, width/height aspect range, front motif, back motif).
CLASS_DESIGNS: dict[str, tuple[str, tuple[float, float], Callable, Callable]] = {
    "phra_sivali": ("tall_pointed", (0.5, 0.6), _front_sivali, _back_sivali),
    "portrait_back": ("square", (0.9, 1.02), _front_portrait, _back_portrait),
    "prok_bodhi_9_leaves": ("triangle", (0.9, 1.05), _front_bodhi, _back_bodhi),
    "somdej_pratanporn_buddhagavak": ("arched", (0.66, 0.76), _front_somdej, _back_somdej),
    "waek_man": ("hexagon", (0.75, 0.85), _front_waek, _back_waek),
    "wat_nong_e_duk": ("oval", (0.72, 0.82), _front_nong, _back_nong),
}
