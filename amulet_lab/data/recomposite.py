"""One training crop re-composited: its piece cut off the plain background and laid on a page, paper, wood or cloth.

The real training crops are tight photos on red. A piece that ``predict_scene`` cuts from a phone photo is
framed the same way (its box plus a thin margin, ``scene.crop_piece``) but stands on a printed page, a table
or a cloth, with a print or phone look. ``recomposite(image, seed)`` makes such a crop from a training crop:
``composites.cut_out`` masks the piece off its background, it is laid (with a soft shadow) on a background of
``composite_scenes`` with a margin of 4-14 % of its long side, given the print look on pages (often) and paper
(sometimes) and always a phone look, and returned as an RGB crop. Training augments with these
(``TrainConfig.recomposed_copies``) and cross-validation scores them (``evaluate.cross_validate``).

One ``(seed, background)`` gives one crop, byte for byte; ``background=None`` draws it from the seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from amulet_lab.errors import ValidationError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["recomposite", "RECOMPOSE_BACKGROUNDS", "EVAL_BACKGROUNDS"]

#: The backgrounds a re-composited crop may stand on (the scene generator's, without the plain table).
RECOMPOSE_BACKGROUNDS = ("page", "paper", "wood", "cloth")
#: The three a cross-validation scores each held-out photo on.
EVAL_BACKGROUNDS = ("page", "wood", "cloth")


def recomposite(image: Image.Image, seed: int, background: str | None = None) -> Image.Image:
    """``image`` (a crop on a plain background) re-composited on ``background`` (see the module doc); RGB out."""
    import numpy as np
    from PIL import Image, ImageFilter

    from amulet_lab.data.composite_scenes import draw_background, phone_look, print_look
    from amulet_lab.data.composites import cut_out

    if not isinstance(image, Image.Image):
        raise ValidationError("recomposite needs a PIL image", field="image", value=type(image).__name__,
                              code="E_IMAGE_TYPE")
    if background is not None and background not in RECOMPOSE_BACKGROUNDS:
        raise ValidationError(f"background must be one of {list(RECOMPOSE_BACKGROUNDS)}", field="background",
                              value=background, code="E_COMPOSITE_ARGUMENT")
    rng = np.random.default_rng([int(seed), 71])
    kind = background or RECOMPOSE_BACKGROUNDS[int(rng.integers(0, len(RECOMPOSE_BACKGROUNDS)))]
    piece = cut_out(image)
    long_side = max(piece.size)
    pad = max(2, round(long_side * rng.uniform(0.04, 0.14)))
    w, h = piece.width + 2 * pad, piece.height + 2 * pad
    side = max(w, h)  # a square frame, as the training crops roughly are
    x = (side - piece.width) // 2 + int(rng.integers(-pad // 3, pad // 3 + 1))
    y = (side - piece.height) // 2 + int(rng.integers(-pad // 3, pad // 3 + 1))
    arr = draw_background(kind, rng, side, side, [(x, y, x + piece.width, y + piece.height)])
    alpha = piece.getchannel("A")
    reach = rng.uniform(0.01, 0.04) * side
    angle = rng.uniform(0, 2 * math.pi)
    shadow = Image.new("L", (side, side), 0)
    shadow.paste(alpha, (int(x + reach * math.cos(angle)), int(y + reach * math.sin(angle))), alpha)
    shade = np.asarray(shadow.filter(ImageFilter.GaussianBlur(max(1.0, reach * 0.8))), np.float32) / 255.0
    arr *= (1.0 - rng.uniform(0.2, 0.5) * shade)[:, :, None]
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    layer.alpha_composite(piece, (x, y))
    rgba = np.asarray(layer, np.float32)
    a = rgba[:, :, 3:] / 255.0
    arr = arr * (1 - a) + rgba[:, :, :3] * a
    unit = side / 600.0
    if (kind == "page" and rng.random() < 0.8) or (kind == "paper" and rng.random() < 0.3):
        arr = print_look(arr, rng, unit)
    return phone_look(arr, rng, unit)
