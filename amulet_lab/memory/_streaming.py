"""Streaming large files: chunked reads, memory maps, streaming hashes, and reduced-scale image decoding."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from amulet_lab.errors import ProcessingError, SecurityError, ValidationError
from amulet_lab.files import existing_file, hash_stream
from amulet_lab.pixels import DECODE_ERRORS, check_dimensions, to_rgb

if TYPE_CHECKING:
    from amulet_lab.config import Settings

__all__ = ["StreamingHandler", "DEFAULT_MAX_SIDE"]

#: Longest side ``process_large_image`` returns by default: ample for a 224-448 px classifier input.
DEFAULT_MAX_SIDE = 1024


class StreamingHandler:
    """Reads, maps and hashes files without loading them whole; decodes large images at reduced scale."""

    def __init__(self, settings: Settings | None = None) -> None:
        if settings is None:
            from amulet_lab.config import get_settings

            settings = get_settings()
        self.settings = settings

    def iter_chunks(self, path_or_fileobj: str | os.PathLike[str] | IO[bytes], chunk_size: int | None = None
                    ) -> Iterator[bytes]:
        """Yield the file's bytes in chunks of ``chunk_size`` (default AMULET_CHUNK_SIZE); a file object stays open.

        Arguments are checked here, at the call, not at the first ``next()``: a bad path fails where it is passed.
        """
        size = self.settings.chunk_size if chunk_size is None else chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError("chunk_size must be a positive int", field="chunk_size", value=size,
                                  code="E_CHUNK_SIZE")
        if hasattr(path_or_fileobj, "read"):
            return iter(lambda: path_or_fileobj.read(size), b"")  # type: ignore[union-attr]
        if not isinstance(path_or_fileobj, (str, os.PathLike)):
            raise ValidationError("expected a path or a binary file object", field="path_or_fileobj",
                                  value=type(path_or_fileobj).__name__, code="E_SOURCE_TYPE")
        return _file_chunks(existing_file(path_or_fileobj), size)

    @contextlib.contextmanager
    def open_mapped(self, path: str | os.PathLike[str]) -> Iterator[mmap.mmap | bytes]:
        """Context manager: a read-only ``mmap`` of the file when it exceeds AMULET_MMAP_THRESHOLD, else its bytes.

        Both support ``len``, slicing and the buffer protocol. A map's pages are loaded only as they are
        touched and the OS may drop them again, so a large file never has to fit in the heap.
        """
        p = existing_file(path)
        size = p.stat().st_size
        if size <= self.settings.mmap_threshold or size == 0:  # an empty file cannot be mapped
            yield p.read_bytes()
            return
        with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped

    def hash_file(self, path: str | os.PathLike[str] | IO[bytes], algo: str = "blake2b") -> str:
        """Hex digest of the file, streamed in AMULET_CHUNK_SIZE chunks (``amulet_lab.files.hash_stream``).

        ``blake2b`` gives its full 64-byte digest here (as ``hashlib.new("blake2b")`` does).
        """
        return hash_stream(path, algo=algo, digest_size=None, chunk_size=self.settings.chunk_size)

    def process_large_image(self, data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes],
                            max_side: int = DEFAULT_MAX_SIDE) -> Any:
        """Decode to an upright RGB ``PIL.Image`` whose longest side is at most ``max_side``, with bounded peak memory.

        An image is "large" when its file size or its decoded size (width x height x bands, read from the
        header without decoding) exceeds AMULET_LARGE_IMAGE_THRESHOLD. A large JPEG is decoded at 1/2, 1/4
        or 1/8 scale by Pillow's ``draft()`` (the DCT scaling of libjpeg), so the full-size pixels never
        exist; other formats decode fully and are then reduced. The result is always reduced to
        ``max_side`` with ``Image.thumbnail`` (Lanczos). The header's size is checked before decoding
        (``amulet_lab.pixels.check_dimensions``: a side over AMULET_MAX_IMAGE_SIDE is E_IMAGE_DIMENSIONS, more
        than AMULET_MAX_IMAGE_PIXELS is a ``SecurityError`` E_IMAGE_BOMB) and the pixels become RGB by
        ``amulet_lab.pixels.to_rgb``, exactly as in ``security.validate_image``.
        """
        from PIL import Image, ImageOps

        if not isinstance(max_side, int) or max_side < 1:
            raise ValidationError("max_side must be a positive int", field="max_side", value=max_side,
                                  code="E_MAX_SIDE")
        with contextlib.ExitStack() as stack:
            if isinstance(data_or_path, (bytes, bytearray, memoryview)):
                nbytes = len(data_or_path)
                source: Any = io.BytesIO(data_or_path)  # BytesIO over bytes shares the buffer until written
            elif isinstance(data_or_path, (str, os.PathLike)):
                p = existing_file(data_or_path)
                nbytes = p.stat().st_size
                source = stack.enter_context(open(p, "rb"))
            elif hasattr(data_or_path, "read"):
                source = data_or_path
                nbytes = -1
            else:
                raise ValidationError("expected bytes, a path or a binary file object", field="data_or_path",
                                      value=type(data_or_path).__name__, code="E_SOURCE_TYPE")
            try:
                image = Image.open(source)  # reads the header only
            except Image.DecompressionBombError as exc:  # Pillow's own (looser) limit tripped on the header
                raise SecurityError(f"image header claims too many pixels: {exc}", severity="high",
                                    code="E_IMAGE_BOMB") from exc
            except DECODE_ERRORS as exc:
                raise ValidationError("not a recognised image", field="data_or_path", code="E_IMAGE_FORMAT") from exc
            width, height = image.size
            check_dimensions(width, height, max_side=self.settings.max_image_side,
                             max_pixels=self.settings.max_image_pixels, field="data_or_path")
            decoded_bytes = width * height * max(1, len(image.getbands()))
            large = max(nbytes, decoded_bytes) > self.settings.large_image_threshold
            scale = max_side / max(width, height)
            try:
                if large and image.format == "JPEG" and scale < 1:
                    # draft() picks the smallest DCT scale whose result is still >= the requested size, so
                    # the final Lanczos step always reduces (never enlarges).
                    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
                image.load()
                image = to_rgb(ImageOps.exif_transpose(image) or image)  # a malformed EXIF block raises here
            except Image.DecompressionBombError as exc:
                raise SecurityError(f"image decodes to too many pixels: {exc}", severity="high",
                                    code="E_IMAGE_BOMB") from exc
            except DECODE_ERRORS as exc:
                raise ProcessingError(f"could not decode image: {exc}", stage="decode") from exc
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return image

    def __repr__(self) -> str:
        s = self.settings
        return (f"StreamingHandler(chunk_size={s.chunk_size}, mmap_threshold={s.mmap_threshold}, "
                f"large_image_threshold={s.large_image_threshold})")


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The chunks of an already checked file; the file closes when the generator ends or is closed."""
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(size), b"")
