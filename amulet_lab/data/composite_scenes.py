"""Backgrounds and camera/print looks for composite scene photos (``amulet_lab.data.composites``).

Each background function draws an RGB float32 array (H, W, 3) in 0..255 from the generator given, with every
random draw in a fixed order, so one generator state gives one picture. ``keep_out`` rectangles (where the
pieces will lie) keep a catalogue page's text and frames off the pieces, as on a printed page.
"""

from __future__ import annotations

import math
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["BACKGROUNDS", "draw_background", "print_look", "phone_look", "Rect"]

#: Background kinds, in the order ``draw_background`` knows them.
BACKGROUNDS = ("page", "paper", "wood", "cloth", "table")

Rect = tuple[float, float, float, float]

_PAPER = ((246, 244, 236), (238, 232, 215), (250, 250, 250), (226, 214, 190), (196, 160, 118), (214, 226, 236),
          (232, 214, 220), (60, 60, 64), (208, 226, 208))
_WOOD = ((196, 152, 102), (118, 80, 48), (128, 62, 40), (218, 188, 142), (150, 110, 70), (90, 60, 40))
_CLOTH = ((150, 22, 32), (30, 48, 120), (24, 84, 48), (28, 28, 30), (206, 192, 164), (190, 150, 60), (110, 20, 60),
          (235, 235, 232))
_TABLE = ((232, 232, 228), (190, 190, 186), (44, 44, 46), (214, 206, 190), (160, 170, 176), (120, 120, 118))
_INK = ((20, 20, 22), (40, 40, 44), (70, 70, 72), (120, 20, 24), (20, 40, 110))


def _field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Smooth noise (H, W) in 0..1: a random grid of about ``cells`` across, upsampled bicubically."""
    import numpy as np
    from PIL import Image

    cx = max(2, cells)
    cy = max(2, int(round(cells * h / max(w, 1))))
    grid = (rng.random((cy, cx)) * 255).astype(np.uint8)
    out = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float32) / 255.0


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    import numpy as np

    return np.clip(np.array(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 255)


def _plain(rng: np.random.Generator, w: int, h: int, colour: np.ndarray, blotch: float) -> np.ndarray:
    """A colour with soft blotches (grain at two scales)."""
    shade = 1.0 + blotch * (_field(rng, w, h, int(rng.integers(3, 9))) - 0.5)
    shade += 0.4 * blotch * (_field(rng, w, h, int(rng.integers(30, 80))) - 0.5)
    return colour[None, None, :] * shade[:, :, None]


def _words(rng: np.random.Generator) -> str:
    letters = string.ascii_lowercase + "0123456789"
    return " ".join("".join(rng.choice(list(letters), int(rng.integers(2, 9)))) for _ in range(40))


def _overlaps(box: Rect, keep_out: list[Rect], pad: float) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < k[2] + pad and x1 > k[0] - pad and y0 < k[3] + pad and y1 > k[1] - pad for k in keep_out)


def _page(rng: np.random.Generator, w: int, h: int, keep_out: list[Rect]) -> np.ndarray:
    """An off-white catalogue page: lines of fake text, headings, rules, frames round pieces, paper grain."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    paper = _jitter(rng, _PAPER[int(rng.integers(0, 3))], 6)
    base = _plain(rng, w, h, paper, 0.04)
    ink = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(ink)
    s = min(w, h)
    margin = s * rng.uniform(0.03, 0.09)
    line = s * rng.uniform(0.014, 0.03)
    font = ImageFont.load_default(size=max(6, int(line * 0.8)))
    big = ImageFont.load_default(size=max(8, int(line * rng.uniform(1.4, 2.2))))
    ink_colour = tuple(int(c) for c in _INK[int(rng.integers(0, len(_INK)))])
    columns = int(rng.integers(1, 3))
    col_w = (w - 2 * margin) / columns
    pad = line * 0.6
    y = margin
    if rng.random() < 0.7:  # a heading
        draw.text((margin, y), _words(rng)[: int(rng.integers(8, 30))].upper(), font=big, fill=255)
        y += line * 2.6
    if rng.random() < 0.5:  # a rule under it
        draw.rectangle((margin, y, w - margin, y + max(1.0, line * 0.12)), fill=200)
        y += line
    text = _words(rng) * 3
    while y < h - margin - line:
        for c in range(columns):
            x0 = margin + c * col_w
            x1 = x0 + col_w * 0.94
            if rng.random() < 0.12:
                continue  # paragraph break
            x_end = x1 if rng.random() > 0.15 else x0 + (x1 - x0) * rng.uniform(0.3, 0.9)
            x = x0
            words = text.split(" ")
            k = int(rng.integers(0, 40))
            while x < x_end:
                word = words[k % len(words)]
                k += 1
                width = font.getlength(word)
                box = (x, y, x + width, y + line)
                if x + width > x_end:
                    break
                if not _overlaps(box, keep_out, pad):
                    draw.text((x, y), word, font=font, fill=255)
                x += width + font.getlength(" ")
        y += line * rng.uniform(1.3, 1.7)
    frames = rng.random() < 0.6
    for k in keep_out:  # frames round some pieces, with a gap
        if frames and rng.random() < 0.6:
            gap = s * rng.uniform(0.01, 0.04)
            width = max(1, int(s * rng.uniform(0.001, 0.004)))
            draw.rectangle((k[0] - gap, k[1] - gap, k[2] + gap, k[3] + gap), outline=230, width=width)
    if rng.random() < 0.3:  # a frame round the page's content
        draw.rectangle((margin * 0.5, margin * 0.5, w - margin * 0.5, h - margin * 0.5), outline=220,
                       width=max(1, int(s * 0.003)))
    alpha = np.asarray(ink, dtype=np.float32)[:, :, None] / 255.0
    ink_rgb = np.array(ink_colour, np.float32)[None, None, :]
    out = base * (1 - alpha) + ink_rgb * alpha
    if rng.random() < 0.35:  # a table strip beside the page
        side = int(rng.integers(0, 4))
        depth = int(s * rng.uniform(0.03, 0.12))
        table = _plain(rng, w, h, _jitter(rng, _TABLE[int(rng.integers(0, len(_TABLE)))], 10), 0.1)
        sl = [slice(None, depth), slice(h - depth, None), slice(None), slice(None)][side]
        sc = [slice(None), slice(None), slice(None, depth), slice(w - depth, None)][side]
        out[sl, sc] = table[sl, sc]
    return out


def _paper(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Plain or patterned paper: stripes, checks, dots or a grid at low contrast."""
    import numpy as np

    base = _plain(rng, w, h, _jitter(rng, _PAPER[int(rng.integers(0, len(_PAPER)))], 10), 0.06)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return base
    period = min(w, h) * rng.uniform(0.015, 0.06)
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if kind == 1:
        pattern = (np.sin(2 * math.pi * u / period) > 0.3).astype(np.float32)
    elif kind == 2:
        pattern = ((np.sin(2 * math.pi * u / period) > 0) ^ (np.sin(2 * math.pi * v / period) > 0)).astype(np.float32)
    elif kind == 3:
        pattern = ((np.cos(2 * math.pi * u / period) * np.cos(2 * math.pi * v / period)) > 0.6).astype(np.float32)
    else:
        pattern = ((np.abs(np.sin(math.pi * u / period)) < 0.06) | (np.abs(np.sin(math.pi * v / period)) < 0.06)
                   ).astype(np.float32)
    contrast = rng.uniform(0.05, 0.2) * (1 if rng.random() < 0.5 else -1)
    tone = _jitter(rng, (128, 128, 128), 90) / 128.0 if rng.random() < 0.5 else np.ones(3, np.float32)
    return base * (1 + contrast * pattern[:, :, None] * tone[None, None, :])


def _wood(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Wood grain: warped stripes along the planks, plank seams, pores."""
    import numpy as np

    colour = _jitter(rng, _WOOD[int(rng.integers(0, len(_WOOD)))], 14)
    vertical = rng.random() < 0.5
    ww, hh = (h, w) if vertical else (w, h)
    yy = np.arange(hh, dtype=np.float32)[:, None]
    period = min(w, h) * rng.uniform(0.01, 0.04)
    warp = _field(rng, ww, hh, int(rng.integers(2, 6))) * min(w, h) * rng.uniform(0.05, 0.2)
    warp += _field(rng, ww, hh, int(rng.integers(10, 30))) * period * 2
    grain = 0.5 + 0.5 * np.sin(2 * math.pi * (yy + warp) / period)
    grain = grain ** rng.uniform(1.0, 3.0)
    tone = 1.0 - rng.uniform(0.1, 0.3) * grain + 0.12 * (_field(rng, ww, hh, 4) - 0.5)
    plank = min(w, h) * rng.uniform(0.15, 0.45)
    seam = (np.mod(yy + rng.uniform(0, plank), plank) < max(1.0, min(w, h) * 0.003)).astype(np.float32)
    tone = tone * (1 - 0.45 * seam)
    if vertical:
        tone = tone.T
    return colour[None, None, :] * tone[:, :, None]


def _cloth(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Fabric: a fine weave, soft folds and a sheen."""
    import numpy as np

    colour = _jitter(rng, _CLOTH[int(rng.integers(0, len(_CLOTH)))], 14)
    period = max(2.0, min(w, h) * rng.uniform(0.003, 0.008))
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    weave = 0.5 + 0.25 * (np.sin(2 * math.pi * xx / period) + np.sin(2 * math.pi * yy / period))
    folds = _field(rng, w, h, int(rng.integers(2, 6)))
    tone = (0.75 + 0.45 * folds) * (1 - rng.uniform(0.05, 0.15) * weave)
    return colour[None, None, :] * tone[:, :, None]


def _table(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A table top: laminate or stone, with a light falloff and fine speckle."""
    import numpy as np

    base = _plain(rng, w, h, _jitter(rng, _TABLE[int(rng.integers(0, len(_TABLE)))], 10), 0.08)
    if rng.random() < 0.5:
        speck = (rng.random((h, w)) < 0.01).astype(np.float32) * rng.uniform(-40, 40)
        base = base + speck[:, :, None]
    return base


def draw_background(kind: str, rng: np.random.Generator, w: int, h: int, keep_out: list[Rect]) -> np.ndarray:
    """The background ``kind`` (one of ``BACKGROUNDS``) as float32 (H, W, 3) 0..255."""
    if kind == "page":
        return _page(rng, w, h, keep_out)
    return {"paper": _paper, "wood": _wood, "cloth": _cloth, "table": _table}[kind](rng, w, h)


def _halftone(arr: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Mix in a rotated dot screen driven by each pixel's darkness (a printed look)."""
    import numpy as np

    h, w = arr.shape[:2]
    period = max(2.5, scale * rng.uniform(2.5, 5.0))
    angle = math.radians(rng.uniform(15, 75))
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    u = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) * (2 * math.pi / period)
    screen = 0.5 + 0.25 * (np.cos(u) + np.cos(v))  # 0..1
    dark = 1.0 - arr.mean(2) / 255.0
    dots = (dark > screen).astype(np.float32)
    mix = rng.uniform(0.2, 0.45)
    printed = arr * (1 - 0.5 * dots[:, :, None]) + (1 - dots[:, :, None]) * 20
    return arr * (1 - mix) + printed * mix


def print_look(arr: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A printed photo: lower saturation, a colour cast of the print, and (often) halftone dots."""
    import numpy as np

    grey = arr.mean(2, keepdims=True)
    arr = grey + (arr - grey) * rng.uniform(0.55, 0.95)
    arr = arr * rng.uniform(0.92, 1.06, 3).astype(np.float32)[None, None, :]
    if rng.random() < 0.6:
        arr = _halftone(arr, rng, scale)
    return arr


def phone_look(arr: np.ndarray, rng: np.random.Generator, scale: float) -> Image.Image:
    """A phone camera: light falloff, maybe glare, white-balance cast, saturation, blur and noise; RGB image out."""
    import numpy as np
    from PIL import Image, ImageFilter

    h, w = arr.shape[:2]
    ramp_x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ramp_y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.25) * (ramp_x * math.cos(angle) + ramp_y * math.sin(angle))
    light = light - rng.uniform(0.0, 0.35) * (ramp_x ** 2 + ramp_y ** 2)
    arr = arr * light[:, :, None]
    if rng.random() < 0.3:  # glare: a soft bright spot
        cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
        r = rng.uniform(0.1, 0.3)
        spot = np.exp(-(((ramp_x + 0.5 - cx) ** 2 + (ramp_y + 0.5 - cy) ** 2) / (2 * r * r)))
        arr = arr + rng.uniform(20, 60) * spot[:, :, None]
    arr = arr * rng.uniform(0.9, 1.1, 3).astype(np.float32)[None, None, :]
    grey = arr.mean(2, keepdims=True)
    arr = grey + (arr - grey) * rng.uniform(0.75, 1.1)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(scale * rng.uniform(0.3, 1.6)))
    sigma = rng.uniform(1.0, 6.0)
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
    noisy = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
