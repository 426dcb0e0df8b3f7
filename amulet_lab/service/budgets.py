"""The service's memory budgets: bytes of uploads in flight and bytes of decoded pixels in flight.

Both are ``threads.WeightedSemaphore``s sized from AMULET_MEMORY_BUDGET_MB (``ServiceBudgets.from_settings``):

- **uploads**: every piece of every request body counts until its request ends (``uploads.UploadLease``);
  a piece that does not fit is refused at once (503, Retry-After). A quarter of the memory budget, and
  never less than one largest request (front and back at AMULET_MAX_UPLOAD_BYTES), so any valid request
  can be served alone.
- **pixels**: a photo's decode reserves what it will hold before it starts (``decoded_bytes``, from the
  header only) and gives it back once the model input is made; a request waits for it up to
  AMULET_PIXEL_WAIT_S, then 503. Half of the memory budget. A photo that needs more than the whole
  pixel budget is refused at once (503, E_PIXEL_BUDGET, ``never_fits``).

Without AMULET_MEMORY_BUDGET_MB, both are sized as if it were ``ASSUMED_BUDGET_MB`` (2 GiB: two of the
largest photos AMULET_MAX_IMAGE_PIXELS allows, decoded at once, fit its pixel half).

What a decode holds, per pixel of what libjpeg or the PNG/WebP/HEIF decoder produces (``BYTES_PER_PIXEL``):
Pillow keeps RGB (and YCbCr, the JPEG decode) at 4 bytes a pixel; modes that ``pixels.to_rgb`` converts
hold the original and the RGB copy at once (L and P: 1 + 4), alpha is composited through RGBA copies
(16), 16-bit grey through a float64 array (18). A JPEG is decoded at a reduced libjpeg scale (draft) to
the model's input size, so its pixels are counted at that scale: Pillow's ``draft`` on the header-only
image gives the exact size the decoder will produce (a 4000x3000 JPEG for a 224 px model: 500x375).
Measured: a 7000x7000 RGB PNG grows RSS by 191 MB through decode and preprocessing (49 M px x 4 B).
"""

from __future__ import annotations

import io
from typing import Any

from amulet_lab.service.uploads import body_limit
from amulet_lab.threads import WeightedSemaphore

__all__ = ["ServiceBudgets", "decoded_bytes", "BYTES_PER_PIXEL", "ASSUMED_BUDGET_MB", "PIXEL_SHARE", "UPLOAD_SHARE"]

MB = 1024 * 1024
#: The memory budget the budgets are sized from when AMULET_MEMORY_BUDGET_MB is not set.
ASSUMED_BUDGET_MB = 2048.0
#: Shares of the memory budget: decoded pixels in flight, and upload bytes in flight.
PIXEL_SHARE = 0.5
UPLOAD_SHARE = 0.25
#: Bytes held per decoded pixel, by the mode the decoder produces (see the module doc).
BYTES_PER_PIXEL: dict[str, int] = {"RGB": 4, "YCbCr": 4, "L": 5, "1": 5, "P": 5, "CMYK": 8, "LAB": 8, "HSV": 8,
                                   "RGBA": 16, "LA": 16, "PA": 16, "RGBa": 16, "La": 16, "I": 18, "F": 18}
_DEFAULT_BPP = 18  # an unusual mode: assume the costliest conversion


def decoded_bytes(data: bytes | bytearray, *, draft_size: int, max_side: int, max_pixels: int) -> int:
    """Bytes the decode of ``data`` will hold, from its header only; 0 when ``validate_image`` will refuse it first.

    Refused before any pixel is decoded (so nothing is reserved): not an allowed format, a header Pillow
    cannot read, a side over ``max_side`` or more than ``max_pixels``. ``draft_size`` is the classifier's
    input size (JPEG reduced-scale decode, as ``validate_image(draft_size=...)`` does).
    """
    from PIL import Image

    from amulet_lab.security import register_heif, sniff_format

    fmt = sniff_format(bytes(data[:64]))
    if fmt is None:
        return 0
    if fmt == "HEIF":
        register_heif()
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
        width, height = image.size
        if width < 1 or height < 1 or max(width, height) > max_side or width * height > max_pixels:
            return 0
        if fmt == "JPEG":
            image.draft("RGB", (draft_size, draft_size))  # sets libjpeg's scale; decodes nothing
            width, height = image.size
        transparent = "transparency" in image.info
        mode = image.mode
    except Exception:  # noqa: BLE001 - any header Pillow refuses is refused again, with its code, by validate_image
        return 0
    per_pixel = 16 if transparent else BYTES_PER_PIXEL.get(mode, 18 if mode.startswith("I;16") else _DEFAULT_BPP)
    return width * height * per_pixel


class ServiceBudgets:
    """The upload-bytes and decoded-pixel budgets of one service (see the module doc)."""

    def __init__(self, upload_bytes: int, pixel_bytes: int, *, pixel_wait_s: float = 10.0) -> None:
        self.uploads = WeightedSemaphore(int(upload_bytes), name="upload_bytes")
        self.pixels = WeightedSemaphore(int(pixel_bytes), name="pixel_bytes")
        self.pixel_wait_s = float(pixel_wait_s)

    @classmethod
    def from_settings(cls, settings: Any, n_fields: int = 2) -> ServiceBudgets:
        """Sized from AMULET_MEMORY_BUDGET_MB (else ``ASSUMED_BUDGET_MB``), AMULET_MAX_UPLOAD_BYTES, AMULET_PIXEL_WAIT_S."""
        budget_mb = settings.memory_budget_mb or ASSUMED_BUDGET_MB
        uploads = max(int(budget_mb * MB * UPLOAD_SHARE), body_limit(settings.max_upload_bytes, n_fields))
        return cls(uploads, max(1, int(budget_mb * MB * PIXEL_SHARE)), pixel_wait_s=settings.pixel_wait_s)

    def stats(self) -> dict[str, Any]:
        """Both budgets: capacity, in use, waiting, peak and counts (for /health and /metrics)."""
        return {"upload_bytes": self.uploads.stats(), "pixel_bytes": self.pixels.stats(),
                "pixel_wait_s": self.pixel_wait_s}

    def __repr__(self) -> str:
        return f"<ServiceBudgets uploads={self.uploads!r} pixels={self.pixels!r}>"
