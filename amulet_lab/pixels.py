"""Pixel-level checks shared by every decoder: image side/pixel limits and one conversion to 8-bit RGB.

Both ``security.validate_image`` and ``memory.StreamingHandler.process_large_image`` use these, so an image
gives the same RGB pixels (and the same refusal) whichever path decoded it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from amulet_lab.errors import SecurityError, ValidationError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["to_rgb", "check_dimensions", "DECODE_ERRORS"]

#: What Pillow raises on malformed or truncated image data, while opening or decoding (its
#: ``UnidentifiedImageError`` is an ``OSError``; ``struct.error`` comes from short header fields).
#: Every decoder catches exactly these, so one broken file gets one kind of coded refusal everywhere.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def check_dimensions(width: int, height: int, *, max_side: int, max_pixels: int, filename: str | None = None,
                     field: str = "image") -> None:
    """Refuse a header size outside 1..``max_side`` per side (E_IMAGE_DIMENSIONS) or over ``max_pixels`` (E_IMAGE_BOMB).

    Called on the header's size, before any pixel is decoded. Too many pixels is a ``SecurityError``
    (a decompression bomb looks exactly like that); a too-long side is a plain ``ValidationError``.
    """
    if width < 1 or height < 1 or max(width, height) > max_side:
        raise ValidationError(f"image is {width}x{height}; each side must be 1..{max_side} px", field=field,
                              value=filename, code="E_IMAGE_DIMENSIONS",
                              context={"width": width, "height": height, "limit": max_side})
    if width * height > max_pixels:
        raise SecurityError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                            "(decompression bomb guard)", severity="high", code="E_IMAGE_BOMB",
                            context={"filename": filename, "width": width, "height": height, "limit": max_pixels})


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB pixels: alpha or palette transparency composited on white, 16/32-bit grey scaled (not clipped)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        values = np.asarray(image).astype(np.float64)
        # PNG 16-bit grey opens as I;16 or, in newer Pillow, as I: a value over 255 means a 16-bit range.
        top = 65535.0 if (mode.startswith("I;16") or values.max(initial=0) > 255) else 255.0
        grey = np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
