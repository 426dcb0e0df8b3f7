"""Cost of ``validate_image`` against a bare Pillow decode, and how cheaply hostile input is refused.

Baseline, timed in the same run: ``Image.open(BytesIO(data)).load()`` (decode only, no checks, no copy).
Ratios:
- ``validate_vs_bare_decode``: our full pipeline (cap, signature, polyglot scan, header limits, decode, EXIF,
  RGB, sha256) per phone-sized JPEG over the bare decode. Target <= 1.3: the checks cost little next to decoding.
- ``bomb_refusal_vs_decode``: refusing a PNG header that claims 20000x20000 over decoding the real JPEG.
  Target <= 0.05: a bomb is refused from its header, before any pixel is decoded.
Figure ``synth_images_per_s``: the synthetic generator's throughput at 224 px (no baseline; for the record).
"""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import zlib

from amulet_lab.bench.micro import MicroResult, Target, time_per_call


def _phone_jpeg(width: int, height: int) -> bytes:
    """A JPEG with photo-like content (smooth gradients plus grain) of the given size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 200, yy / height * 180, (xx + yy) / (width + height) * 220], axis=2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def run(quick: bool = False) -> MicroResult:
    """Time validate_image against a bare decode, a bomb refusal, and the synthetic generator."""
    from PIL import Image

    from amulet_lab.data import synthesize
    from amulet_lab.errors import SecurityError
    from amulet_lab.security import ImageLimits, validate_image

    width, height = (800, 600) if quick else (4000, 3000)
    number, repeat = (2, 3) if quick else (3, 5)
    data = _phone_jpeg(width, height)
    bomb = _bomb_png()
    limits = ImageLimits()

    def bare() -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    def ours() -> None:
        validate_image(data, limits=limits)

    def refuse_bomb() -> None:
        try:
            validate_image(bomb, limits=limits)
        except SecurityError:
            return
        raise AssertionError("the bomb was not refused")

    bare_s = time_per_call(bare, number=number, repeat=repeat)
    ours_s = time_per_call(ours, number=number, repeat=repeat)
    security_log = logging.getLogger("amulet_lab.security")
    level = security_log.level
    security_log.setLevel(logging.ERROR)  # one warning per refusal is right in service, noise in a timing loop
    try:
        bomb_s = time_per_call(refuse_bomb, number=number * 20, repeat=repeat)
    finally:
        security_log.setLevel(level)

    per_class = 2 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        import time

        start = time.perf_counter()
        synthesize(tmp, per_class, seed=0, size=224, progress=False)
        synth_s = time.perf_counter() - start
    return MicroResult(
        name="validation",
        figures={
            "jpeg_bytes": float(len(data)),
            "jpeg_pixels": float(width * height),
            "bare_decode_s": bare_s,
            "validate_image_s": ours_s,
            "bomb_refusal_s": bomb_s,
            "synth_images_per_s": 6 * per_class / synth_s,
        },
        ratios={"validate_vs_bare_decode": ours_s / bare_s, "bomb_refusal_vs_decode": bomb_s / bare_s},
        targets={"validate_vs_bare_decode": Target("<=", 1.3), "bomb_refusal_vs_decode": Target("<=", 0.05)},
        notes=f"{width}x{height} JPEG; baseline Image.open().load() without checks",
    )
