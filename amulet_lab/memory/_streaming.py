"""Streaming large files: chunked reads, memory maps, streaming hashes, and reduced-scale image decoding.

Images are decoded by the package's one decoder, ``amulet_lab.security.validate_image`` (same checks, same
pixels, same refusals as every other entry point); this module only asks it for a reduced scale.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from amulet_lab.errors import ValidationError
from amulet_lab.files import existing_file, hash_stream

if TYPE_CHECKING:
    from amulet_lab.security import ImageLimits

__all__ = ["StreamingHandler", "DEFAULT_MAX_SIDE"]

#: Longest side ``process_large_image`` returns by default: ample for a 224-448 px classifier input.
DEFAULT_MAX_SIDE = 1024


class StreamingHandler:
    """Reads, maps and hashes files without loading them whole; decodes large images at reduced scale."""

    def __init__(self, limits: ImageLimits | None = None, *, chunk_size: int = 8192) -> None:
        from amulet_lab.security import ImageLimits

        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValidationError("chunk_size must be a positive int", field="chunk_size", value=chunk_size,
                                  code="E_CHUNK_SIZE")
        self.limits = limits if limits is not None else ImageLimits()
        self.chunk_size = chunk_size

    @classmethod
    def from_settings(cls, settings: Any) -> StreamingHandler:
        """A handler with the settings' image limits and chunk size (called at the edges)."""
        from amulet_lab.security import ImageLimits

        return cls(ImageLimits.from_settings(settings), chunk_size=settings.chunk_size)

    def iter_chunks(self, path_or_fileobj: str | os.PathLike[str] | IO[bytes], chunk_size: int | None = None
                    ) -> Iterator[bytes]:
        """Yield the file's bytes in chunks of ``chunk_size`` (default AMULET_CHUNK_SIZE); a file object stays open.

        Arguments are checked here, at the call, not at the first ``next()``: a bad path fails where it is passed.
        """
        size = self.chunk_size if chunk_size is None else chunk_size
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
        if size <= self.limits.mmap_threshold or size == 0:  # an empty file cannot be mapped
            yield p.read_bytes()
            return
        with open(p, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped

    def hash_file(self, path: str | os.PathLike[str] | IO[bytes], algo: str = "blake2b") -> str:
        """Hex digest of the file, streamed in AMULET_CHUNK_SIZE chunks (``amulet_lab.files.hash_stream``).

        ``blake2b`` gives its full 64-byte digest here (as ``hashlib.new("blake2b")`` does).
        """
        return hash_stream(path, algo=algo, digest_size=None, chunk_size=self.chunk_size)

    def process_large_image(self, data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes],
                            max_side: int = DEFAULT_MAX_SIDE) -> Any:
        """Decode to an upright RGB ``PIL.Image`` whose longest side is at most ``max_side``, with bounded peak memory.

        Through ``security.validate_image``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by Pillow's ``draft()``
        (the DCT scaling of libjpeg), the smallest whose longest side is still >= ``max_side``, so the
        full-size pixels never exist; other formats decode fully and are then reduced. A file over
        AMULET_MMAP_THRESHOLD is mapped, not read onto the heap. The result is reduced to ``max_side`` with
        ``Image.thumbnail`` (Lanczos).
        """
        from PIL import Image

        from amulet_lab.security import validate_image

        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
            raise ValidationError("max_side must be a positive int", field="max_side", value=max_side,
                                  code="E_MAX_SIDE")
        image = validate_image(data_or_path, limits=self.limits, draft_max_side=max_side).image
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return image

    def __repr__(self) -> str:
        return (f"StreamingHandler(chunk_size={self.chunk_size}, mmap_threshold={self.limits.mmap_threshold}, "
                f"max_upload_bytes={self.limits.max_upload_bytes})")


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """The chunks of an already checked file; the file closes when the generator ends or is closed."""
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(size), b"")
