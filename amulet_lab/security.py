"""Untrusted image input: the one decoder of the package, with a coded refusal at every step, and safe file names.

Every image that enters the package as bytes, a path or a file object (uploads, the widgets, the CLI,
training, evaluation, benchmarks, large-file streaming) goes through ``validate_image``, which returns one
type, ``ValidatedImage``. It runs, in order (cheapest and most dangerous first):

1. size cap (``limits.max_upload_bytes``) before the bytes are read in full: ``stat`` for paths, at most
   cap + 1 bytes for file objects. A file larger than ``limits.mmap_threshold`` is memory-mapped, not
   read: its bytes are checked and hashed in place and Pillow decodes from the file, so the raw bytes are
   never held on the heap beside the pixels;
2. signature allow-list from the bytes themselves (JPEG, PNG, WebP ``RIFF....WEBP``, HEIC/HEIF ``ftyp``
   brands); the file name and any MIME type are never trusted;
3. polyglot check: HTML/script/PHP text anywhere outside the compressed pixel data (JPEG scans, PNG IDAT,
   WebP VP8*, HEIF mdat: random-looking bytes where short markers occur by chance), or an
   archive/executable/PDF signature after the image's own end (ZIP appended to a JPEG, and so on), is
   refused. Other trailing bytes are tolerated because phones append their own trailers (Samsung, motion
   photos);
4. ``Image.open(..., formats=[the sniffed format])``; the header's size is checked against
   ``limits.max_image_side`` and ``limits.max_image_pixels`` before any pixel is decoded;
5. a full decode (a truncated file is refused; ``LOAD_TRUNCATED_IMAGES`` is never set), at a reduced
   libjpeg scale when the caller asks for a size (``draft_size``);
6. EXIF orientation applied, then RGB (transparency composited on white, 16-bit scaled, CMYK converted).

The content hash (SHA-256 of the bytes) is computed once, here, unless the caller already has it (the
classifier hashes first to look its prediction cache up, and passes the digest in).

Refusal codes: E_IMAGE_INPUT, E_IMAGE_NOT_FOUND, E_IMAGE_EMPTY, E_IMAGE_TOO_LARGE, E_IMAGE_SIGNATURE,
E_IMAGE_POLYGLOT, E_IMAGE_DIMENSIONS, E_IMAGE_BOMB, E_IMAGE_TRUNCATED, E_IMAGE_DECODE. Input errors are
``ValidationError``; hostile-looking files (polyglot, decompression bomb) are ``SecurityError``.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import mmap
import os
import re
import struct
import threading
import unicodedata
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

from amulet_lab.errors import SecurityError, ValidationError
from amulet_lab.pixels import DECODE_ERRORS, check_dimensions, to_rgb

if TYPE_CHECKING:
    from PIL import Image

    from amulet_lab.config import Settings

__all__ = ["validate_image", "ValidatedImage", "ImageLimits", "sniff_format", "content_hash", "safe_filename",
           "generated_name", "ImageInput", "ALLOWED_FORMATS", "register_heif"]

#: Pillow format names accepted from untrusted input (what ``sniff_format`` can return).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "HEIF")

logger = logging.getLogger("amulet_lab.security")

#: What ``validate_image`` accepts: raw bytes, a path, or a binary file object.
ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif"})
# Markup that makes a browser or an interpreter treat the file as something else; looked for anywhere. Every
# marker starts with "<", which lets the regex engine skip ahead by a fast literal scan (no lower-cased copy, no
# IGNORECASE: both are many times slower over megabytes).
_MARKUP_WORDS = ("script", "html", "?php", "!doctype html", "iframe", "svg")
_TEXT_MARKERS = re.compile(b"<(?:" + b"|".join(
    b"".join(b"[" + re.escape(c.lower()).encode() + re.escape(c.upper()).encode() + b"]" if c.isalpha()
             else re.escape(c).encode() for c in word) for word in _MARKUP_WORDS) + b")")
_LONGEST_MARKER = 1 + max(len(word) for word in _MARKUP_WORDS)
# A JPEG marker inside entropy-coded data: 0xFF followed by anything but stuffing (00), restarts (D0-D7) or fill.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Signatures of other file types; looked for after the image's own end.
_BINARY_MARKERS = (b"PK\x03\x04", b"PK\x05\x06", b"%PDF-", b"Rar!\x1a\x07", b"7z\xbc\xaf\x27\x1c", b"\x7fELF",
                   b"MZ\x90\x00", b"#!/")
_SAFE_SUFFIX = re.compile(r"^[a-z0-9]{1,8}$")
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})

_heif_lock = threading.Lock()
_heif_registered = False


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What ``validate_image`` accepts: file bytes, side and pixel limits, and when a file is memory-mapped."""

    max_upload_bytes: int = 20_971_520
    max_image_side: int = 12_000
    max_image_pixels: int = 50_000_000
    mmap_threshold: int = 4_194_304

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{field.name} must be a whole number >= 1, got {value!r}", field=field.name,
                                      value=value, code="E_IMAGE_LIMITS")

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits of ``settings`` (called at the edges: service, CLI, widgets, benchmarks)."""
        return cls(settings.max_upload_bytes, settings.max_image_side, settings.max_image_pixels,
                   settings.mmap_threshold)


@dataclasses.dataclass(frozen=True)
class ValidatedImage:
    """An image that passed every check: upright RGB pixels plus facts about the original bytes.

    ``width`` and ``height`` are the original's, upright (EXIF orientation applied); ``image`` may be smaller
    when the caller asked for a reduced-scale decode.
    """

    image: Image.Image
    format: str
    width: int
    height: int
    nbytes: int
    sha256: str

    def facts(self) -> dict[str, object]:
        """Format, original size and byte count (what the service reports per upload)."""
        return {"format": self.format, "width": self.width, "height": self.height, "bytes": self.nbytes}

    def __repr__(self) -> str:
        return (f"ValidatedImage({self.format} {self.width}x{self.height}, {self.nbytes} bytes, "
                f"sha256={self.sha256[:12]}...)")


def content_hash(data: bytes | bytearray | memoryview | mmap.mmap) -> str:
    """The content key of image bytes: SHA-256 hex (cryptographic: a shared cache must not be poisoned)."""
    return hashlib.sha256(data).hexdigest()


def _refuse(message: str, code: str, filename: str | None, **context: object) -> ValidationError:
    return ValidationError(message, field="image", value=filename, code=code, context=context)


def _hostile(message: str, code: str, filename: str | None, **context: object) -> SecurityError:
    logger.warning("refused image %s: %s [%s]", filename or "<bytes>", message, code)
    return SecurityError(message, severity="high", code=code, context={"filename": filename, **context})


@contextlib.contextmanager
def _read_capped(data: ImageInput, limits: ImageLimits, filename: str | None
                 ) -> collections.abc.Iterator[tuple[bytes | mmap.mmap, BinaryIO | None]]:
    """The input's bytes (or a read-only map of a large file, with the open file), refusing anything over the cap
    before reading it all."""
    cap = limits.max_upload_bytes
    handle: BinaryIO | None = None
    with contextlib.ExitStack() as stack:
        if isinstance(data, (bytes, bytearray, memoryview)):
            raw: bytes | mmap.mmap = data if isinstance(data, bytes) else bytes(data)
        elif isinstance(data, (str, os.PathLike)):
            path = Path(data)
            try:
                size = path.stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                raise _refuse(f"image file not found: {path.name}", "E_IMAGE_NOT_FOUND", filename) from None
            except OSError as exc:
                raise _refuse(f"cannot read {path.name}: {exc.strerror or exc}", "E_IMAGE_INPUT", filename) from None
            if not path.is_file():
                raise _refuse(f"not a regular file: {path.name}", "E_IMAGE_NOT_FOUND", filename)
            if size > cap:
                raise _refuse(f"image is {size} bytes, over the limit of {cap}", "E_IMAGE_TOO_LARGE", filename,
                              nbytes=size, limit=cap)
            try:
                handle = stack.enter_context(path.open("rb"))
                if size > limits.mmap_threshold:
                    raw = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
                else:
                    raw = handle.read(cap + 1)  # the file may have grown since stat
                    handle = None
            except (OSError, ValueError) as exc:  # no permission; emptied after stat (an empty file cannot be mapped)
                raise _refuse(f"cannot read {path.name}: {exc}", "E_IMAGE_INPUT", filename) from None
        elif hasattr(data, "read"):
            raw = data.read(cap + 1)
            if not isinstance(raw, bytes):
                raise _refuse("file object must be opened in binary mode", "E_IMAGE_INPUT", filename)
        else:
            raise _refuse(f"expected bytes, a path or a binary file object, got {type(data).__name__}",
                          "E_IMAGE_INPUT", filename)
        if len(raw) > cap:
            raise _refuse(f"image is over the limit of {cap} bytes", "E_IMAGE_TOO_LARGE", filename,
                          nbytes=len(raw), limit=cap)
        if not len(raw):
            raise _refuse("image is empty (0 bytes)", "E_IMAGE_EMPTY", filename)
        yield raw, handle


def sniff_format(data: bytes | mmap.mmap) -> str | None:
    """The Pillow format name from the leading bytes (JPEG, PNG, WEBP, HEIF), or None if not allowed."""
    data = bytes(data[:64])
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 16 and data[4:8] == b"ftyp":
        box_size = struct.unpack(">I", data[:4])[0]
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(box_size, len(data), 64) - 3, 4)}
        # The major brand decides; AVIF files also list mif1, so they only pass with a HEIF major brand.
        if data[8:12] in _HEIF_BRANDS or (data[8:12] != b"avif" and brands & {b"heic", b"heix"}):
            return "HEIF"
    return None


def _jpeg_layout(data: bytes) -> tuple[int | None, list[tuple[int, int]]]:
    """(offset just after EOI or None, ranges of entropy-coded scan data) from a walk over the segments.

    Every segment (headers, APPn, COM, the tables between progressive scans) is outside the ranges, so
    markup hidden there is still seen; only the compressed scan bytes, which are random-looking, are skipped.
    """
    pos, n = 2, len(data)
    skips: list[tuple[int, int]] = []
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None, skips  # not a marker where one must be: malformed, the rest is scanned
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2, skips
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            pos += 2
            continue
        if pos + 4 > n:
            return None, skips
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip entropy-coded bytes up to the next real marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:  # truncated inside the scan: the decode refuses it later
                skips.append((pos, n))
                return None, skips
            skips.append((pos, found.start()))
            pos = found.start()
    return None, skips




def _png_layout(data: bytes) -> tuple[int | None, list[tuple[int, int]]]:
    """(offset just after IEND or None, ranges of IDAT/fdAT payloads: compressed pixels)."""
    pos, n = 8, len(data)
    skips: list[tuple[int, int]] = []
    while pos + 12 <= n:
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind in (b"IDAT", b"fdAT"):
            skips.append((pos + 8, min(pos + 8 + length, n)))
        pos += 12 + length
        if kind == b"IEND":
            return (pos if pos <= n else None), skips
    return None, skips




def _webp_layout(data: bytes) -> tuple[int | None, list[tuple[int, int]]]:
    """(end of the RIFF container, ranges of VP8/VP8L/ALPH/ANMF payloads: compressed pixels)."""
    riff = struct.unpack("<I", data[4:8])[0]
    end = 8 + riff + (riff & 1)
    pos, stop = 12, min(end, len(data))
    skips: list[tuple[int, int]] = []
    while pos + 8 <= stop:
        kind = data[pos:pos + 4]
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if kind in (b"VP8 ", b"VP8L", b"ALPH", b"ANMF"):
            skips.append((pos + 8, min(pos + 8 + size, stop)))
        pos += 8 + size + (size & 1)
    return end, skips


def _bmff_layout(data: bytes) -> tuple[int | None, list[tuple[int, int]]]:
    """(offset after the last well-formed top-level ISO-BMFF box, ranges of ``mdat`` payloads) for HEIF."""
    pos, n = 0, len(data)
    skips: list[tuple[int, int]] = []
    while pos + 8 <= n:
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if not all(0x20 <= c < 0x7F for c in kind):
            return pos, skips
        header = 8
        if size == 1 and pos + 16 <= n:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = n - pos  # the box runs to the end of the file
        if size < header:
            return pos, skips
        if kind == b"mdat":
            skips.append((pos + header, min(pos + size, n)))
        pos += size
    return min(pos, n), skips




def _layout(data: bytes, fmt: str) -> tuple[int | None, list[tuple[int, int]]]:
    """(image end or None, sorted ranges of compressed pixel data that the markup scan skips)."""
    if fmt == "JPEG":
        return _jpeg_layout(data)
    if fmt == "PNG":
        return _png_layout(data)
    if fmt == "WEBP":
        return _webp_layout(data)
    return _bmff_layout(data)




def _find_markup(data: bytes, skips: list[tuple[int, int]]) -> re.Match[bytes] | None:
    """The first markup match outside the ``skips`` ranges (searched in place: no copies of the data)."""
    pos = 0
    for start, stop in [*skips, (len(data), len(data))]:
        if start > pos:
            # A marker straddling a range edge is still caught: the search may run a few bytes past ``start``.
            found = _TEXT_MARKERS.search(data, pos, min(len(data), start + _LONGEST_MARKER))
            if found and found.start() < start:
                return found
        pos = max(pos, stop)
    return None


def _check_polyglot(data: bytes, fmt: str, filename: str | None) -> None:
    """Refuse script/markup text outside the compressed pixel data, and other files' signatures after the end.

    Compressed pixel data (JPEG scans, PNG IDAT, WebP VP8*, HEIF mdat) is skipped: it is random-looking, so
    over a few MB a short marker such as ``<svg`` turns up by chance in about one real photo in a hundred,
    and nothing reads it as text. Headers, metadata, comments and any trailer are scanned.
    """
    end, skips = _layout(data, fmt)
    found = _find_markup(data, skips)
    if found:
        raise _hostile(f"image holds markup or script text ({found.group(0).decode('latin-1')!r}): refused as a "
                       "polyglot", "E_IMAGE_POLYGLOT", filename, offset=found.start())
    if end is None or end >= len(data):
        return
    trailer = data[end:]
    for marker in _BINARY_MARKERS:
        if marker in trailer:
            raise _hostile(f"{len(trailer)} bytes after the end of the {fmt} hold another file ({marker[:4]!r})",
                           "E_IMAGE_POLYGLOT", filename, offset=end + trailer.index(marker))
    logger.debug("image %s has %d trailing bytes after its end (tolerated)", filename or "<bytes>", len(trailer))


def register_heif() -> None:
    """Teach Pillow to read HEIC/HEIF, once, on first need (importing pillow_heif is not free)."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_registered = True


def validate_image(
    data: ImageInput, *, filename: str | None = None, limits: ImageLimits | None = None,
    draft_size: int | None = None, draft_max_side: int | None = None, sha256: str | None = None,
) -> ValidatedImage:
    """Check untrusted image input step by step and return it decoded, upright and RGB (see the module doc).

    ``draft_size``: a JPEG may be decoded at a reduced libjpeg scale that keeps both sides >= this size;
    ``draft_max_side``: one that keeps the longest side >= this size (every byte is still decoded, so
    truncation is still refused; other formats decode at full size). ``sha256``: the content hash when the
    caller already computed it (``content_hash``), so the bytes are hashed once.
    """
    from PIL import Image, ImageOps

    limits = limits if limits is not None else ImageLimits()
    if not isinstance(limits, ImageLimits):
        raise ValidationError("limits must be an ImageLimits", field="limits", value=type(limits).__name__,
                              code="E_IMAGE_LIMITS")
    if filename is None and isinstance(data, (str, os.PathLike)):
        filename = Path(data).name
    shown = safe_filename(filename) if filename else None
    with _read_capped(data, limits, shown) as (raw, handle):
        fmt = sniff_format(raw)
        if fmt is None:
            raise _refuse("not a JPEG, PNG, WebP or HEIC/HEIF image (checked by content, not by name)",
                          "E_IMAGE_SIGNATURE", shown, head=bytes(raw[:8]).hex())
        _check_polyglot(raw, fmt, shown)
        if fmt == "WEBP" and 8 + struct.unpack("<I", raw[4:8])[0] > len(raw):
            raise _refuse("WebP file is truncated (shorter than its RIFF header says)", "E_IMAGE_TRUNCATED", shown)
        if fmt == "HEIF":
            register_heif()
        digest = sha256 if sha256 is not None else content_hash(raw)
        nbytes = len(raw)
        if handle is not None:
            handle.seek(0)
        source = handle if handle is not None else io.BytesIO(raw)  # a BytesIO over bytes shares the buffer
        try:
            image = Image.open(source, formats=[fmt])
        except Image.DecompressionBombError as exc:  # Pillow's own (looser) limit tripped while reading the header
            raise _hostile(f"image header claims too many pixels: {exc}", "E_IMAGE_BOMB", shown) from exc
        except DECODE_ERRORS as exc:
            raise _decode_error(exc, fmt, shown, "open") from exc
        # No ``with``: closing would free the pixels, and the BytesIO holds no OS resource.
        width, height = image.size
        try:
            check_dimensions(width, height, max_side=limits.max_image_side, max_pixels=limits.max_image_pixels,
                             filename=shown)
        except SecurityError as exc:
            logger.warning("refused image %s: %s [%s]", shown or "<bytes>", exc.message, exc.code)
            raise
        try:
            if fmt == "JPEG" and (draft_size or draft_max_side):
                if draft_max_side:
                    scale = min(1.0, draft_max_side / max(width, height))
                    image.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
                else:
                    image.draft("RGB", (draft_size, draft_size))
            image.load()
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap the sides
            ImageOps.exif_transpose(image, in_place=True)  # in place: a copy would cost a full frame
            rgb = to_rgb(image)
        except Image.DecompressionBombError as exc:
            raise _hostile(f"image decodes to too many pixels: {exc}", "E_IMAGE_BOMB", shown) from exc
        except DECODE_ERRORS as exc:
            raise _decode_error(exc, fmt, shown, "decode") from exc
    if turned:
        width, height = height, width
    return ValidatedImage(rgb, fmt, width, height, nbytes, digest)


def _decode_error(exc: BaseException, fmt: str, filename: str | None, stage: str) -> ValidationError:
    text = str(exc)
    truncated = any(word in text.lower() for word in ("truncat", "end of file", "premature end"))
    code = "E_IMAGE_TRUNCATED" if truncated else "E_IMAGE_DECODE"
    what = "is truncated" if truncated else "cannot be decoded"
    return _refuse(f"{fmt} image {what} ({stage}: {type(exc).__name__}: {text[:200]})", code, filename, format=fmt)


def safe_filename(name: str, *, max_bytes: int = 120) -> str:
    """A display-safe file name: no folders or traversal, no NUL/control/format characters, bounded length."""
    if not isinstance(name, str):
        raise ValidationError(f"file name must be a string, got {type(name).__name__}", field="filename",
                              value=repr(name)[:80], code="E_FILENAME")
    if max_bytes < 16:
        raise ValidationError("max_bytes must be >= 16", field="max_bytes", value=max_bytes, code="E_FILENAME")
    text = unicodedata.normalize("NFC", name)
    # Control (Cc) and format (Cf: zero-width, right-to-left override that disguises extensions) characters go.
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]  # no folders: only the last component stays
    # Letters (Thai vowel and tone marks included), digits, dot, dash, underscore; the rest becomes "_".
    text = "".join(ch if ch.isalnum() or ch in "._-" or unicodedata.category(ch).startswith("M") else "_"
                   for ch in text)
    text = re.sub(r"_{2,}", "_", text).strip("._-")  # no hidden files, no "..", no option-like leading dash
    stem, dot, suffix = text.rpartition(".")
    if not dot or not _SAFE_SUFFIX.match(suffix.lower()):
        stem, suffix = text, ""
    suffix = suffix.lower()
    stem = stem.strip("._-") or "file"
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    tail = f".{suffix}" if suffix else ""
    budget = max_bytes - len(tail.encode("utf-8"))
    encoded = stem.encode("utf-8")
    if len(encoded) > budget:  # cut on a character boundary
        stem = encoded[:budget].decode("utf-8", errors="ignore").rstrip("._ ") or "file"
    return stem + tail


def generated_name(suffix: str = "") -> str:
    """A fresh storage name (uuid4 hex) with an optional checked suffix such as ``".jpg"``."""
    if not isinstance(suffix, str):
        raise ValidationError("suffix must be a string", field="suffix", value=repr(suffix), code="E_FILENAME")
    clean = suffix.lower().lstrip(".")
    if clean and not _SAFE_SUFFIX.match(clean):
        raise ValidationError(f"suffix {suffix!r} must be 1-8 letters or digits", field="suffix", value=suffix,
                              code="E_FILENAME")
    return uuid.uuid4().hex + (f".{clean}" if clean else "")
