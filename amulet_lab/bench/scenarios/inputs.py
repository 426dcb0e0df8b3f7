"""The scenarios' inputs: image files under a folder, their bytes, resized and made-distinct copies."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

from amulet_lab.bench.scenarios.arguments import check_images, check_int
from amulet_lab.errors import ValidationError

__all__ = ["image_paths", "load_images", "resize_images", "distinct_images"]


def image_paths(root: str | Path, *, limit: int | None = None, seed: int | None = None) -> list[Path]:
    """Image files under ``root`` (any depth; ``amulet_lab.data.IMAGE_SUFFIXES``), in path order or shuffled
    with ``seed``, at most ``limit`` of them."""
    from amulet_lab.data.dataset import IMAGE_SUFFIXES

    folder = Path(root)
    if not folder.is_dir():
        raise ValidationError(f"data folder not found: {folder}", field="data_dir", value=str(folder), code="E_NO_SAMPLES")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValidationError(f"no images under {folder}", field="data_dir", value=str(folder), code="E_NO_SAMPLES")
    if seed is not None:
        random.Random(seed).shuffle(paths)
    if limit is not None:
        paths = paths[: check_int("limit", limit)]
    return paths


def load_images(data_dir: str | Path, *, limit: int | None = None, seed: int | None = 0) -> list[bytes]:
    """The bytes of up to ``limit`` images under ``data_dir`` (any depth), shuffled with ``seed`` (None: path order).

    Bytes, not paths: the scenarios then time decoding, not the disk.
    """
    return [p.read_bytes() for p in image_paths(data_dir, limit=limit, seed=seed)]


def resize_images(images: Sequence[bytes], size: int, *, quality: int = 92) -> list[bytes]:
    """Each image re-encoded as JPEG with its longer side ``size`` px (aspect kept): the ``image_sizes`` knob."""
    from PIL import Image

    from amulet_lab.security import validate_image

    side = check_int("image_size", size, 8)
    out = []
    for data in check_images(images):
        img = validate_image(data).image
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def distinct_images(images: Sequence[bytes], n: int, *, seed: int = 0) -> list[bytes]:
    """``n`` images with pairwise different bytes, cycling over ``images``.

    Repeats beyond the first pass get one corner pixel changed and are re-encoded as JPEG, so a
    content-addressed cache sees a new image while the model sees the same photo.
    """
    from amulet_lab.security import validate_image

    base = check_images(images)
    check_int("n", n)
    out: list[bytes] = []
    rng = random.Random(seed)
    for i in range(n):
        data = base[i % len(base)]
        round_ = i // len(base)
        if round_ == 0:
            out.append(bytes(data))
            continue
        img = validate_image(data).image
        img.putpixel((0, 0), (round_ % 256, (round_ // 256) % 256, rng.randrange(256)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out
