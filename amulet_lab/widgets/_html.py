"""What the notebook widgets share: plain words for bands and names, inline images and placeholders, uploads."""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
from pathlib import Path
from typing import Any

from amulet_lab.errors import AmuletError, ValidationError

log = logging.getLogger("amulet_lab.widgets")

__all__ = ["BAND_WORDS", "band_words", "english_name", "sample_pair", "upload_bytes"]

#: The confidence band in plain words, as the user reads it.
BAND_WORDS = {"reliable": "Reliable", "verify": "Check with an expert", "retake": "Retake the photo",
              "unknown": "Not one of the six known types"}
_BAND_COLOURS = {"reliable": "#2e7d32", "verify": "#ef6c00", "retake": "#c62828", "unknown": "#616161"}
_PREVIEW_PX = 220
_CHART_PX = 720
#: Long file names and paths wrap instead of widening their box (no horizontal scrollbars).
_WRAP = "overflow-wrap:anywhere;word-break:break-word"
_SIDES = ("front", "back")


def _uncertainty(pred: Any) -> float:
    """How much an answer needs a second look: 1 for an unknown one, else 1 - confidence."""
    return 1.0 if pred.is_unknown else 1.0 - float(pred.confidence)


def band_words(band: str) -> str:
    """``reliable`` / ``verify`` / ``retake`` (or ``unknown``: no band) in plain words."""
    if band not in BAND_WORDS:
        raise ValidationError(f"unknown confidence band {band!r}", field="band", value=band)
    return BAND_WORDS[band]


@functools.lru_cache(maxsize=1)
def _english_names() -> dict[str, str]:
    from amulet_lab.data.labels import load_labels

    try:
        return {label.key: label.english for label in load_labels()}
    except AmuletError:
        return {}


def english_name(key: str) -> str:
    """The English name of a class key (``data/labels.json``); the key in words when it is not listed there."""
    return _english_names().get(key) or str(key).replace("_", " ").capitalize()


def sample_pair(folder: str | Path | None = None) -> tuple[Path, Path | None]:
    """A front photo and its back (if any) from the first class folder of ``folder`` (default: the samples)."""
    if folder is None:
        from amulet_lab.data import SAMPLES_DIR

        folder = SAMPLES_DIR
    from amulet_lab.data.dataset import IMAGE_SUFFIXES

    root = Path(folder)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) if root.is_dir() else []
    for cls in classes:
        photos = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        fronts = [p for p in photos if "front" in p.name]
        if fronts:
            back = fronts[0].with_name(fronts[0].name.replace("front", "back"))
            return fronts[0], (back if back.is_file() else None)
    raise ValidationError(f"no class folder with a front photo in {root}", field="folder", value=str(root), code="E_NO_IMAGE")


def upload_bytes(value: Any) -> tuple[str, bytes] | None:
    """``(name, bytes)`` of the last file in an ipywidgets 8 ``FileUpload.value``; None when empty."""
    if not value:
        return None
    if isinstance(value, dict):  # ipywidgets 7 shape: {name: {"content": ...}}; tolerated for old kernels
        name, item = list(value.items())[-1]
        item = dict(item, name=name)
    else:
        item = value[-1]
    if not isinstance(item, dict) or "content" not in item:
        raise ValidationError("unexpected FileUpload value: expected dicts with 'content'", field="upload", value=type(item).__name__)
    return str(item.get("name", "upload")), bytes(item["content"])



def decoded_once(data: bytes, classifier: Any) -> Any:
    """A HEIC/HEIF upload decoded once (a ``ValidatedImage``, for the model and the preview alike: libheif has no
    reduced decode, and a 12-MP HEIC costs about 0.5 s a decode); any other format as it is (the model's draft
    decode is cheaper than a full one)."""
    from amulet_lab.security import ImageLimits, sniff_format, validate_image

    if sniff_format(bytes(data[:64])) != "HEIF":
        return data
    limits = getattr(classifier, "limits", None)
    return validate_image(data, limits=limits if isinstance(limits, ImageLimits) else ImageLimits())


def thai_face_for(classifier: Any) -> str:
    """The bundled Thai font's ``@font-face`` for the Thai names of ``classifier``'s labels and data/labels.json."""
    from amulet_lab.fonts import thai_font_face

    names = {str(getattr(lab, "thai", "")) for lab in getattr(classifier, "labels", None) or ()}
    try:
        from amulet_lab.data.labels import load_labels

        names |= {lab.thai for lab in load_labels()}
    except AmuletError:
        log.info("data/labels.json could not be read: the Thai font covers the classifier's own names only")
    return thai_font_face("".join(sorted(names)))


def _thumbnail(data: Any, side: int = 112) -> bytes:
    """A JPEG thumbnail of ``data`` (bytes, or a ``ValidatedImage`` already decoded: no second decode)."""
    from amulet_lab.images import decode
    from amulet_lab.security import ValidatedImage

    img = data.image.copy() if isinstance(data, ValidatedImage) else decode(data, target_size=side)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _img_html(data: bytes, mime: str, *, alt: str, max_width: int) -> str:
    """An ``<img>`` with the image inline (a data URL), scaled down to fit ``max_width`` pixels."""
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (f"<img src='{src}' alt='{html.escape(alt, quote=True)}' "
            f"style='max-width:min(100%, {max_width}px);height:auto;display:block'>")


def _placeholder(text: str, *, width: int, height: int) -> str:
    """A dashed box with a line of text: what is shown where there is no image."""
    return (f"<div class='amulet-placeholder' style='box-sizing:border-box;width:{width}px;max-width:100%;"
            f"height:{height}px;border:1px dashed #bbb;border-radius:6px;display:flex;align-items:center;"
            f"justify-content:center;text-align:center;padding:8px;color:#777;font-size:12px;{_WRAP}'>"
            f"{html.escape(text)}</div>")




def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ValidationError(f"photo not found: {path}", field="path", value=str(path), code="E_IMAGE_NOT_FOUND")
    return path.read_bytes()

