"""Images to model input: ``decode`` (any image to upright RGB) and ``PreprocessSpec.to_input`` (the one
preprocessing step of training, evaluation and inference).

``decode`` hands bytes and paths to the package's one decoder, ``security.validate_image`` (signature,
polyglot, size and pixel checks; with ``target_size`` a JPEG is decoded at the smallest libjpeg scale
that is still at least that size, several times faster than a full decode and a resize). Images already
in memory (a PIL image, a numpy array) are converted to RGB without another decoder.
``PreprocessSpec.to_input`` turns decoded images (or a uint8 NCHW batch) into one normalised float32
NCHW batch: squeeze to a square of ``size`` pixels, scale to [0, 1], subtract the mean, divide by the std.

PIL and numpy load here; torch loads only inside the functions that build tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amulet_lab.errors import ProcessingError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

    from amulet_lab.security import ImageLimits

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

    def to_input(self, images: Any) -> torch.Tensor:
        """The model input: a normalised (N, 3, size, size) float32 batch from a uint8 NCHW tensor or decoded images.

        ``images`` is a uint8 tensor (N, 3, H, W) (resized to ``size`` when H, W differ), or a sequence of PIL
        images / ``ValidatedImage`` (squeezed to ``size`` x ``size``). The one preprocessing step of training,
        evaluation and inference.
        """
        import torch
        import torch.nn.functional as F

        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
                raise ValidationError(f"expected a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}",
                                      field="images", code="E_INPUT_SHAPE")
            x = images.float().div_(255.0)
            if x.shape[-2:] != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            return self.normalise(x)
        return self.normalise(self.uint8(images).float().div_(255.0))

    def uint8(self, images: Sequence[Any]) -> torch.Tensor:
        """Decoded images (PIL or ``ValidatedImage``) squeezed to ``size`` as one uint8 (N, 3, size, size) tensor."""
        import numpy as np
        import torch

        items = list(images)
        out = torch.empty((len(items), 3, self.size, self.size), dtype=torch.uint8)
        for i, item in enumerate(items):
            img = getattr(item, "image", item)  # a ValidatedImage holds its pixels in .image
            out[i] = torch.from_numpy(np.asarray(resize_square(img, self.size)).copy()).permute(2, 0, 1)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Inverse of ``to_dict``."""
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def decode(source: ImageInput, *, target_size: int | tuple[int, int] | None = None,
           limits: ImageLimits | None = None) -> Image.Image:
    """An upright RGB PIL image from a path, bytes, PIL image or HxW(x3|x4) array.

    Bytes and paths go through ``security.validate_image`` (JPEG, PNG, WebP or HEIC/HEIF within ``limits``);
    with ``target_size`` a JPEG is decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) that is still at
    least that size. A caller's PIL image is never mutated; its size is checked against ``limits``.
    """
    from PIL import Image, ImageOps

    from amulet_lab.pixels import DECODE_ERRORS, check_dimensions, to_rgb
    from amulet_lab.security import ImageLimits, validate_image

    limits = limits if limits is not None else ImageLimits()
    if isinstance(source, (bytes, bytearray, memoryview, str, Path)):
        side = None
        if target_size is not None:
            w, h = (target_size, target_size) if isinstance(target_size, int) else target_size
            # draft() keeps the scaled image >= the requested size in both sides; orientation may swap
            # sides after transpose, so ask for the larger side both ways.
            side = max(w, h)
        return validate_image(source, limits=limits, draft_size=side).image
    if type(source).__module__ == "numpy":
        return Image.fromarray(to_array(source))
    if not isinstance(source, Image.Image):
        raise ValidationError(
            f"cannot decode an image from {type(source).__name__}; pass a path, bytes, a PIL image or a numpy array",
            field="image", value=type(source).__name__, code="E_IMAGE_TYPE",
        )
    check_dimensions(*source.size, max_side=limits.max_image_side, max_pixels=limits.max_image_pixels)
    try:
        source.load()
        # Not in place: a caller's image must stay as it was.
        return to_rgb(ImageOps.exif_transpose(source))
    except DECODE_ERRORS as exc:  # a lazily opened image may still fail on its pixels
        raise ProcessingError(f"could not decode image: {exc}", stage="decode", code="E_IMAGE_DECODE") from exc


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


def to_uint8_batch(images: Sequence[ImageInput], size: int, limits: ImageLimits | None = None) -> torch.Tensor:
    """Decode images (any ``decode`` input) to one (N, 3, size, size) uint8 tensor, squashed square."""
    return PreprocessSpec(size).uint8([decode(item, target_size=size, limits=limits) for item in images])


def preprocess(images: ImageInput | Sequence[ImageInput], spec: PreprocessSpec,
               limits: ImageLimits | None = None) -> torch.Tensor:
    """A normalised NCHW float32 batch from one image or a sequence of them (any ``decode`` input)."""
    if not isinstance(spec, PreprocessSpec):
        raise ValidationError("spec must be a PreprocessSpec", field="spec", value=type(spec).__name__)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValidationError("preprocess needs at least one image", field="images", code="E_EMPTY_BATCH")
    return spec.to_input([decode(item, target_size=spec.size, limits=limits) for item in items])
