"""Rendering of synthetic photos: a piece's material, pose, lighting, background and camera noise.

``render_amulet`` draws a class design (``synth_designs``) as a photo; ``render_unknown`` draws a
"not an amulet" picture. Every random draw comes from the generator passed in, in a fixed order, so the
same generator state gives the same pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from amulet_lab.data.synth_designs import CLASS_DESIGNS, draw_silhouette
from amulet_lab.errors import ValidationError

if TYPE_CHECKING:  # Pillow and numpy load only when something is rendered
    import numpy as np
    from PIL import Image

__all__ = ["render_amulet", "render_unknown", "piece_params", "SIDES", "UNKNOWN_KINDS"]

#: The sides of a piece, in the order their generators are seeded.
SIDES = ("front", "back")
#: The kinds of "not an amulet" images ``synthesize_unknowns`` cycles through.
UNKNOWN_KINDS = ("texture", "coin", "noise")

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


# --------------------------------------------------------------------------------------------- rendering

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    import numpy as np
    from PIL import Image

    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255


def _pick(rng: np.random.Generator, options: tuple, p: tuple[float, ...]) -> Any:
    return options[int(rng.choice(len(options), p=p))]


def piece_params(key: str, rng: np.random.Generator) -> dict[str, Any]:
    """What the front and back of one physical piece share: material, colour, proportions, usual background."""
    shape, aspect_range, _, _ = CLASS_DESIGNS[key]
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

    if key not in CLASS_DESIGNS:
        raise ValidationError(f"unknown class {key!r}", field="key", value=key, code="E_SYNTH_CLASS")
    if side not in SIDES:
        raise ValidationError(f"side must be front or back, got {side!r}", field="side", value=side,
                              code="E_SYNTH_SIDE")
    piece = piece or piece_params(key, rng)
    shape, _, front, back = CLASS_DESIGNS[key]
    res = 2 * size  # drawn at twice the size, then reduced: cheap anti-aliasing

    # Geometry of the piece inside its own square canvas: height 88 %, width from the aspect.
    h = 0.88 * res
    w = min(0.95 * res, h * piece["aspect"])
    box = ((res - w) / 2, (res - h) / 2, (res + w) / 2, (res + h) / 2)
    mask_img = Image.new("L", (res, res), 0)
    draw_silhouette(ImageDraw.Draw(mask_img), shape, box)
    mask_img = mask_img.filter(ImageFilter.GaussianBlur(res * 0.004))

    # Height map: a bevelled body, an optional inner frame, and the relief motif.
    relief = Image.new("L", (res, res), 0)
    draw = ImageDraw.Draw(relief)
    inset = 0.08 * min(w, h)
    inner = (box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset)
    if side == "front" and piece["frame"]:
        draw_silhouette(draw, shape, inner, fill=150, width=max(2, int(res * 0.012)))
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


def render_unknown(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
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
