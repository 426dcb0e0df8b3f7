"""A synthetic stand-in for amulet photos: six classes rendered with Pillow and numpy only.

It exists so the toolkit (training, evaluation, the service, the notebooks) runs offline on a fresh
machine. It is NOT real data: it imitates the *kind* of variation in the real photos (silhouette, relief,
material, background, lighting, pose, blur, noise, JPEG), not their look. Each class keeps its own
silhouette and relief motif, so a small CNN can learn it; the rest varies per piece and per photo.

Every image is drawn from its own seeded generator (seed, class, piece, side), so a run is byte-for-byte
reproducible and a larger ``per_class`` only adds pieces.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amulet_lab.data.labels import load_labels
from amulet_lab.errors import ValidationError
from amulet_lab.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # Pillow and numpy load only when something is rendered
    import numpy as np
    from PIL import Image, ImageDraw

__all__ = ["synthesize", "synthesize_unknowns", "render_amulet", "SYNTH_VERSION", "UNKNOWN_KINDS"]

#: Bumped whenever the rendering changes, so a dataset records which generator made it.
SYNTH_VERSION = 1
#: The kinds of "not an amulet" images ``synthesize_unknowns`` cycles through.
UNKNOWN_KINDS = ("texture", "coin", "noise")

_SIDES = ("front", "back")
_UNKNOWN_RE = re.compile(r"^(?:" + "|".join(UNKNOWN_KINDS) + r")_\d{4}\.jpg$")
_FILE_RE = re.compile(r"^(?P<key>[a-z0-9_]+)_(?:front|back)_\d{4}\.jpg$")

# Materials: (name, base RGB range low, high). Clay spans the pale-to-dark earth tones of the real set.
_MATERIALS = (
    ("clay", (150, 120, 85), (215, 195, 160)),
    ("clay_dark", (70, 65, 60), (120, 110, 95)),
    ("clay_white", (200, 195, 180), (235, 230, 215)),
    ("bronze", (120, 75, 40), (175, 115, 65)),
    ("gold", (185, 145, 50), (230, 190, 90)),
)
_MATERIAL_P = (0.38, 0.17, 0.12, 0.18, 0.15)
# Backgrounds: mostly plain red like the real photos, then black, white, grey, blue, green, wood.
_BACKGROUNDS = (
    ((170, 0, 0), (235, 30, 25)),
    ((0, 0, 0), (30, 30, 30)),
    ((215, 215, 210), (250, 250, 245)),
    ((110, 110, 110), (160, 160, 160)),
    ((20, 40, 110), (60, 90, 170)),
    ((20, 80, 35), (60, 130, 70)),
    ((95, 60, 30), (150, 105, 60)),
)
_BACKGROUND_P = (0.55, 0.12, 0.08, 0.07, 0.06, 0.06, 0.06)


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


def _draw_silhouette(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
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


_CLASSES: dict[str, tuple[str, tuple[float, float], Callable, Callable]] = {
    "phra_sivali": ("tall_pointed", (0.5, 0.6), _front_sivali, _back_sivali),
    "portrait_back": ("square", (0.9, 1.02), _front_portrait, _back_portrait),
    "prok_bodhi_9_leaves": ("triangle", (0.9, 1.05), _front_bodhi, _back_bodhi),
    "somdej_pratanporn_buddhagavak": ("arched", (0.66, 0.76), _front_somdej, _back_somdej),
    "waek_man": ("hexagon", (0.75, 0.85), _front_waek, _back_waek),
    "wat_nong_e_duk": ("oval", (0.72, 0.82), _front_nong, _back_nong),
}


# --------------------------------------------------------------------------------------------- rendering

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    import numpy as np
    from PIL import Image

    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255


def _pick(rng: np.random.Generator, options: tuple, p: tuple[float, ...]) -> Any:
    return options[int(rng.choice(len(options), p=p))]


def _piece_params(key: str, rng: np.random.Generator) -> dict[str, Any]:
    """What the front and back of one physical piece share: material, colour, proportions, usual background."""
    shape, aspect_range, _, _ = _CLASSES[key]
    material, low, high = _pick(rng, _MATERIALS, _MATERIAL_P)
    t = rng.random()
    colour = [lo + t * (hi - lo) + rng.uniform(-8, 8) for lo, hi in zip(low, high)]
    return {
        "shape": shape,
        "aspect": float(rng.uniform(*aspect_range)),
        "material": material,
        "colour": colour,
        "background": _pick(rng, _BACKGROUNDS, _BACKGROUND_P),
        "frame": bool(rng.random() < 0.7),
    }


def render_amulet(key: str, side: str, size: int, rng: np.random.Generator,
                  piece: dict[str, Any] | None = None) -> Image.Image:
    """One synthetic photo (RGB, ``size`` x ``size``) of class ``key``, ``side`` front or back."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    if key not in _CLASSES:
        raise ValidationError(f"unknown class {key!r}", field="key", value=key, code="E_SYNTH_CLASS")
    if side not in _SIDES:
        raise ValidationError(f"side must be front or back, got {side!r}", field="side", value=side,
                              code="E_SYNTH_SIDE")
    piece = piece or _piece_params(key, rng)
    shape, _, front, back = _CLASSES[key]
    res = 2 * size  # drawn at twice the size, then reduced: cheap anti-aliasing

    # Geometry of the piece inside its own square canvas: height 88 %, width from the aspect.
    h = 0.88 * res
    w = min(0.95 * res, h * piece["aspect"])
    box = ((res - w) / 2, (res - h) / 2, (res + w) / 2, (res + h) / 2)
    mask_img = Image.new("L", (res, res), 0)
    _draw_silhouette(ImageDraw.Draw(mask_img), shape, box)
    mask_img = mask_img.filter(ImageFilter.GaussianBlur(res * 0.004))

    # Height map: a bevelled body, an optional inner frame, and the relief motif.
    relief = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(relief)
    inset = 0.08 * min(w, h)
    inner = (box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset)
    if side == "front" and piece["frame"]:
        _draw_silhouette(draw, shape, inner, fill=150, width=max(2, int(res * 0.012)))
    motif_box = (inner[0] + inset * 0.5, inner[1] + inset * 0.5, inner[2] - inset * 0.5, inner[3] - inset * 0.5)
    if shape in ("triangle", "tall_pointed"):  # the narrow top holds nothing: use the lower part
        motif_box = (motif_box[0], motif_box[1] + 0.12 * h, motif_box[2], motif_box[3])
    (front if side == "front" else back)(draw, motif_box, rng)
    relief_strength = 1.0 if side == "front" else rng.uniform(0.45, 0.8)  # backs are shallower
    mask = np.asarray(mask_img, dtype=np.float32) / 255
    body = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(res * 0.02)), dtype=np.float32) / 255
    motif = np.asarray(relief.filter(ImageFilter.GaussianBlur(res * rng.uniform(0.003, 0.007))),
                       dtype=np.float32) / 255
    height = 6.0 * body + 3.0 * relief_strength * motif * mask
    height += 0.25 * _smooth_noise(rng, res, 24)  # worn, uneven surface

    # Directional shading from the height gradient (light mostly from above), emboss-like.
    gy, gx = np.gradient(height)
    angle = rng.uniform(-2.4, -0.7)  # radians: from the upper left through the top to the upper right
    lx, ly = math.cos(angle), math.sin(angle)
    shade = 1.0 + 9.0 * (gx * -lx + gy * -ly)
    shade = np.clip(shade, 0.45, 1.6)

    # Material colour with blotches and grain; metals get a specular kick on lit slopes.
    colour = np.array(piece["colour"], dtype=np.float32)
    blotch = 0.82 + 0.36 * _smooth_noise(rng, res, 10)
    grain_sigma = 0.05 if piece["material"].startswith("clay") else 0.025  # clay is grainier than metal
    grain = 1.0 + grain_sigma * rng.standard_normal((res, res), dtype=np.float32)
    surface = colour[None, None, :] * (blotch * grain)[:, :, None] * shade[:, :, None]
    if piece["material"] in ("bronze", "gold"):
        surface += 70.0 * np.clip(shade - 1.15, 0, None)[:, :, None]
    # A light gradient across the piece: uneven lighting in the photo.
    ramp = np.arange(res, dtype=np.float32) / res - 0.5
    g_angle, g_strength = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.25)
    light = 1.0 + g_strength * (ramp[None, :] * math.cos(g_angle) + ramp[:, None] * math.sin(g_angle))
    surface *= light[:, :, None]

    piece_rgba = np.empty((res, res, 4), dtype=np.uint8)
    piece_rgba[:, :, :3] = np.clip(surface, 0, 255)
    piece_rgba[:, :, 3] = np.asarray(mask_img)
    amulet = Image.fromarray(piece_rgba, "RGBA")
    if side == "back":
        amulet = amulet.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # the back of a piece is its mirror outline

    # Pose: scale, rotation about the piece's centre and position, as one affine resampling (output -> input),
    # then down to the final size; the background is made at the final size directly.
    scale = rng.uniform(0.62, 0.92)
    theta = math.radians(rng.uniform(-18, 18))
    slack = res * (1 - scale)
    cx, cy = res / 2 + rng.uniform(-0.4, 0.4) * slack, res / 2 + rng.uniform(-0.4, 0.4) * slack
    a, b = math.cos(theta) / scale, math.sin(theta) / scale
    matrix = (a, b, res / 2 - a * cx - b * cy, -b, a, res / 2 + b * cx - a * cy)
    placed = amulet.transform((res, res), Image.Transform.AFFINE, matrix,
                              resample=Image.Resampling.BILINEAR).reduce(2)

    # Background: a plain colour with a soft gradient, vignette, fine noise and the piece's shadow.
    bg_low, bg_high = piece["background"] if rng.random() < 0.8 else _pick(rng, _BACKGROUNDS, _BACKGROUND_P)
    t = rng.random()
    bg_colour = np.array([lo + t * (hi - lo) for lo, hi in zip(bg_low, bg_high)], dtype=np.float32)
    ramp = np.arange(size, dtype=np.float32) / size - 0.5
    vignette = 1.0 - rng.uniform(0.05, 0.3) * 2 * (ramp[None, :] ** 2 + ramp[:, None] ** 2)
    bg_light = 1.0 + g_strength * (ramp[None, :] * math.cos(g_angle) + ramp[:, None] * math.sin(g_angle))
    bg = bg_colour[None, None, :] * (vignette * bg_light)[:, :, None] + 3 * rng.standard_normal((size, size, 1),
                                                                                                 np.float32)
    shadow_img = placed.getchannel("A").filter(ImageFilter.GaussianBlur(size * 0.02))
    off = (int(size * rng.uniform(0.005, 0.03)), int(size * rng.uniform(0.005, 0.03)))
    shadow = np.roll(np.asarray(shadow_img, dtype=np.float32) / 255, off, axis=(0, 1))
    bg *= (1.0 - rng.uniform(0.3, 0.6) * shadow)[:, :, None]
    background = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    image = Image.alpha_composite(background, placed).convert("RGB")

    blur = rng.uniform(0, 1.1) if rng.random() < 0.6 else 0.0
    if blur > 0.15:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    sigma = rng.uniform(0, 7)
    noisy = np.asarray(image, dtype=np.float32) + np.float32(sigma) * rng.standard_normal((size, size, 3), np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new synthetic set into an old one unless ``overwrite`` (then old synthetic files go)."""
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder", field="out_dir", value=str(out),
                              code="E_SYNTH_OUT_DIR")
    old = [p for key in _CLASSES for p in (out / key).glob("*.jpg") if _FILE_RE.match(p.name)] if out.is_dir() else []
    if old and not overwrite:
        raise ValidationError(f"{out} already holds {len(old)} synthetic images; pass overwrite=True (--overwrite) "
                              "or choose an empty folder", field="out_dir", value=str(out), code="E_SYNTH_NOT_EMPTY")
    for path in old:  # stale pieces of a larger earlier run would otherwise linger
        path.unlink()



def _check_counts(count: tuple[str, Any], size: Any, seed: Any) -> None:
    """Refuse a count below 1, a size outside 32..1024 or a negative seed (E_SYNTH_ARGUMENT)."""
    for name, value, low in (count + (1,), ("size", size, 32), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValidationError(f"{name} must be an integer >= {low}, got {value!r}", field=name, value=value,
                                  code="E_SYNTH_ARGUMENT")
    if size > 1024:
        raise ValidationError(f"size must be <= 1024, got {size}", field="size", value=size, code="E_SYNTH_ARGUMENT")

def synthesize(out_dir: str | Path, per_class: int, seed: int, size: int = 224, *, progress: bool = True,
               overwrite: bool = False) -> Path:
    """Render ``per_class`` synthetic photos of each class into ``out_dir/<key>/`` plus ``groups.json``.

    Pieces are numbered; piece ``n`` of a class has ``<key>_front_<n>.jpg`` and (when ``per_class`` allows)
    ``<key>_back_<n>.jpg``, and ``groups.json`` maps both to the same piece id. Same arguments, same bytes.
    """
    from tqdm.auto import tqdm

    _check_counts(("per_class", per_class), size, seed)
    import numpy as np

    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    labels = load_labels()
    missing = [label.key for label in labels if label.key not in _CLASSES]
    if missing:
        raise ValidationError(f"the generator has no design for classes {missing}", field="labels", value=missing,
                              code="E_SYNTH_CLASS")
    groups: dict[str, str] = {}
    jobs = [(label, n, _SIDES[n % 2]) for label in labels for n in range(per_class)]
    for label, n, side in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        piece_id = n // 2
        piece = _piece_params(label.key, np.random.default_rng([seed, label.index, piece_id]))
        rng = np.random.default_rng([seed, label.index, piece_id, 1 + _SIDES.index(side)])
        image = render_amulet(label.key, side, size, rng, piece)
        relative = f"{label.key}/{label.key}_{side}_{piece_id:04d}.jpg"
        atomic_write_bytes(out / relative, _jpeg(image, int(rng.integers(60, 96))))
        groups[relative] = f"{label.key}_{piece_id:04d}"
    atomic_write_text(out / "groups.json", json.dumps(groups, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out / "synth.json", json.dumps(
        {"generator": "amulet_lab.data.synth", "version": SYNTH_VERSION, "per_class": per_class, "seed": seed,
         "size": size, "classes": [label.key for label in labels], "synthetic": True}, indent=1) + "\n")
    return out


def _render_unknown(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A 'not an amulet' picture: a plain texture, a coin-like disc, or random noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    if kind == "texture":
        base = rng.uniform(40, 220, 3)
        field = 0.6 + 0.8 * _smooth_noise(rng, size, int(rng.integers(4, 40)))
        grain = rng.normal(1.0, 0.08, (size, size))
        return Image.fromarray(np.clip(base[None, None, :] * (field * grain)[:, :, None], 0, 255).astype(np.uint8))
    if kind == "coin":
        bg = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(image)
        metal = tuple(int(c) for c in rng.choice([(190, 190, 195), (184, 115, 51), (212, 175, 55)]))
        r = size * rng.uniform(0.3, 0.42)
        c = size / 2 + rng.uniform(-0.05, 0.05) * size
        d.ellipse((c - r, c - r, c + r, c + r), fill=metal, outline=tuple(max(0, v - 60) for v in metal),
                  width=max(2, int(r * 0.08)))
        d.ellipse((c - 0.8 * r, c - 0.8 * r, c + 0.8 * r, c + 0.8 * r), outline=tuple(max(0, v - 40) for v in metal),
                  width=max(1, int(r * 0.03)))
        d.text((c - r * 0.15, c - r * 0.15), str(int(rng.integers(1, 11))), fill=tuple(max(0, v - 80) for v in metal))
        return image.filter(ImageFilter.GaussianBlur(0.6))
    raise ValidationError(f"unknown kind {kind!r} (one of {UNKNOWN_KINDS})", field="kind", value=kind,
                          code="E_SYNTH_ARGUMENT")


def synthesize_unknowns(out_dir: str | Path, n: int, seed: int, size: int = 224, *,
                        overwrite: bool = False) -> list[Path]:
    """Write ``n`` 'not an amulet' images (texture, coin, noise in turn) into ``out_dir`` for rejection checks.

    Like ``synthesize``: ``size`` is 32..1024, and a folder already holding unknowns from an earlier run is
    refused unless ``overwrite`` (then those files go first, so a smaller run leaves no stale ones).
    """
    import numpy as np

    _check_counts(("n", n), size, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out} exists and is not a folder", field="out_dir", value=str(out),
                              code="E_SYNTH_OUT_DIR")
    old = sorted(p for p in out.glob("*.jpg") if _UNKNOWN_RE.match(p.name)) if out.is_dir() else []
    if old and not overwrite:
        raise ValidationError(f"{out} already holds {len(old)} synthetic unknowns; pass overwrite=True "
                              "(--overwrite) or choose an empty folder", field="out_dir", value=str(out),
                              code="E_SYNTH_NOT_EMPTY")
    for path in old:
        path.unlink()
    paths = []
    for i in range(n):
        kind = UNKNOWN_KINDS[i % len(UNKNOWN_KINDS)]
        rng = np.random.default_rng([seed, 1000, i])
        path = out / f"{kind}_{i:04d}.jpg"
        atomic_write_bytes(path, _jpeg(_render_unknown(kind, size, rng), 90))
        paths.append(path)
    return paths
