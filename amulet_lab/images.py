"""Image decoding and preprocessing shared by training, evaluation and inference.

``decode`` turns a path, bytes, a PIL image or a numpy array into an upright RGB PIL image; for a
JPEG that is far larger than the model needs it asks libjpeg for a reduced-scale decode
(``Image.draft``), which skips most of the IDCT work and is several times faster than a full
decode followed by a resize. ``preprocess`` turns images into one normalised NCHW float32 batch as
described by a ``PreprocessSpec``; the spec's ``transform_id`` is part of every image-cache key.

PIL and numpy load here; torch loads only inside ``preprocess`` (the package stays light to import).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amulet_lab.errors import ProcessingError, SecurityError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

    from amulet_lab.config import Settings

__all__ = ["PreprocessSpec", "decode", "preprocess", "to_uint8_batch", "resize_square", "to_array", "ImageInput"]

#: What ``decode`` accepts.
ImageInput = Any  # str | Path | bytes | bytearray | memoryview | PIL.Image.Image | numpy.ndarray

_SPEC_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How images become model input: square side ``size`` (pixels), per-channel ``mean`` and ``std``."""

    size: int = 128
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= 1024:
            raise ValidationError(f"size must be a whole number in 8..1024, got {self.size!r}", field="size", value=self.size)
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValidationError(f"{name} must have 3 values (R, G, B), got {value!r}", field=name, value=value)
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise ValidationError(f"std values must be > 0, got {self.std!r}", field="std", value=self.std)

    @property
    def transform_id(self) -> str:
        """A short stable id of this transform (part of the image-cache key)."""
        blob = json.dumps({"v": _SPEC_VERSION, **self.to_dict()}, sort_keys=True).encode()
        return f"sq{self.size}-" + hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints)."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel of an NCHW float batch in [0, 1]: the one normalisation of the project."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of ``to_dict``."""
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def _open_bytes(data: bytes, settings: Settings) -> Image.Image:
    """Open (header only) bytes of an allowed format whose header size is within the limits."""
    from PIL import Image

    from amulet_lab.pixels import DECODE_ERRORS, check_dimensions
    from amulet_lab.security import ALLOWED_FORMATS, register_heif, sniff_format

    if len(data) == 0:
        raise ValidationError("image data is empty (0 bytes)", field="image", code="E_IMAGE_EMPTY")
    fmt = sniff_format(data)
    if fmt is None or fmt not in ALLOWED_FORMATS:
        raise ValidationError(
            "image data is not a JPEG, PNG, WebP or HEIC/HEIF image", field="image", code="E_IMAGE_FORMAT",
            context={"head": data[:8].hex()},
        )
    if fmt == "HEIF":
        register_heif()
    try:
        # formats= keeps Pillow from trying its other (less hardened) plugins, e.g. EPS via Ghostscript.
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise SecurityError(f"image header claims too many pixels: {exc}", severity="high", code="E_IMAGE_BOMB") from exc
    except DECODE_ERRORS as exc:
        raise ValidationError(
            f"{fmt} image cannot be opened: {type(exc).__name__}: {str(exc)[:200]}", field="image", code="E_IMAGE_FORMAT"
        ) from exc
    check_dimensions(*img.size, max_side=settings.max_image_side, max_pixels=settings.max_image_pixels)
    return img


def decode(
    source: ImageInput, *, target_size: int | tuple[int, int] | None = None, settings: Settings | None = None
) -> Image.Image:
    """An upright RGB PIL image from a path, bytes, PIL image or HxW(x3|x4) array.

    Bytes and paths must be JPEG, PNG, WebP or HEIC/HEIF within ``settings.max_image_side`` /
    ``max_image_pixels`` (checked on the header, before decoding). With ``target_size`` a JPEG that
    ``decode`` opened itself is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that is still at
    least that size, so the caller's resize works on far fewer pixels. A caller's PIL image is never mutated.
    """
    from PIL import Image, ImageOps

    from amulet_lab.pixels import DECODE_ERRORS, check_dimensions, to_rgb

    if settings is None:
        from amulet_lab.config import get_settings

        settings = get_settings()
    owned = True  # draft() changes the image in place: only on images opened here
    if isinstance(source, Image.Image):
        img = source
        owned = False
        check_dimensions(*img.size, max_side=settings.max_image_side, max_pixels=settings.max_image_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _open_bytes(bytes(source), settings)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValidationError(f"image file not found: {path}", field="image", value=str(path), code="E_IMAGE_NOT_FOUND")
        img = _open_bytes(path.read_bytes(), settings)
    elif type(source).__module__ == "numpy":
        return Image.fromarray(to_array(source))
    else:
        raise ValidationError(
            f"cannot decode an image from {type(source).__name__}; pass a path, bytes, a PIL image or a numpy array",
            field="image",
            value=type(source).__name__,
            code="E_IMAGE_TYPE",
        )
    try:
        if owned and target_size is not None and img.format == "JPEG":
            w, h = (target_size, target_size) if isinstance(target_size, int) else target_size
            # draft() keeps the scaled image >= the requested size in both sides; orientation may swap
            # sides after transpose, so ask for the larger side both ways.
            side = max(w, h)
            img.draft("RGB", (side, side))
        img.load()
        # Not in place: a caller's image must stay as it was.
        img = ImageOps.exif_transpose(img)
        # The same 8-bit conversion as security.validate_image, so training and serving see the same pixels.
        img = to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise SecurityError(f"image decodes to too many pixels: {exc}", severity="high", code="E_IMAGE_BOMB") from exc
    except DECODE_ERRORS as exc:  # truncated / malformed data surfaces only when pixels are read
        raise ProcessingError(f"could not decode image: {exc}", stage="decode", code="E_IMAGE_DECODE") from exc
    return img


def to_array(array: Any) -> np.ndarray:
    """A HxWx3 uint8 RGB array from a gray, RGB or RGBA array (uint8, 16-bit ints scaled, or float in 0..1)."""
    import numpy as np

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValidationError(
            f"an image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}", field="image", value=arr.shape,
            code="E_IMAGE_ARRAY",
        )
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValidationError("image array holds NaN or infinite values", field="image", code="E_IMAGE_ARRAY")
            scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
            arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        else:
            # Like pixels.to_rgb: a 16-bit range (uint16, or ints over 255) is scaled, not clipped.
            top = 65535.0 if (arr.dtype == np.uint16 or arr.max(initial=0) > 255) else 255.0
            arr = np.clip(arr.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """``img`` squeezed to ``size`` x ``size`` (the whole piece stays in frame; aspect is not kept)."""
    from PIL import Image

    if img.size == (size, size):
        return img
    # reducing_gap lets Pillow shrink by whole factors first: much faster on big inputs, same look.
    return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)


def to_uint8_batch(images: Sequence[ImageInput], size: int) -> torch.Tensor:
    """Decode images (any ``decode`` input) to one (N, 3, size, size) uint8 tensor, squashed square."""
    import numpy as np
    import torch

    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    for i, item in enumerate(images):
        img = resize_square(decode(item, target_size=size), size)
        out[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return out


def preprocess(images: ImageInput | Sequence[ImageInput], spec: PreprocessSpec) -> torch.Tensor:
    """A normalised NCHW float32 batch from one image or a sequence of them (any ``decode`` input)."""
    if not isinstance(spec, PreprocessSpec):
        raise ValidationError("spec must be a PreprocessSpec", field="spec", value=type(spec).__name__)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValidationError("preprocess needs at least one image", field="images", code="E_EMPTY_BATCH")
    return spec.normalise(to_uint8_batch(items, spec.size).float().div_(255.0))
