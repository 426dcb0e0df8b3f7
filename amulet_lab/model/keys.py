"""Content keys of images: the SHA-256 that keys an image's answer in the prediction cache.

Bytes are hashed; a file's digest is remembered per (resolved path, size, mtime), so a repeated path costs
a ``stat``; a ``ValidatedImage`` brings its own; an array is hashed through a byte view with its shape and
dtype; a PIL image has no key (hashing its pixels would cost about as much as classifying it). Sizes over
the upload limit are not hashed at all: the decoder refuses them without reading them whole.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Any

from amulet_lab.security import ValidatedImage, content_hash

__all__ = ["ContentKeys", "PATH_KEYS_MAX"]

#: Paths whose digest is remembered (by path, size and mtime), least recently used out first.
PATH_KEYS_MAX = 4096
_BYTES = (bytes, bytearray, memoryview)


class ContentKeys:
    """The content key of bytes, paths, validated images and arrays, a file's digest remembered by its stat."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._paths: collections.OrderedDict[tuple[str, int, int], str] = collections.OrderedDict()

    def __call__(self, image: Any) -> str | None:
        """The key of ``image``, or None when it has none."""
        import numpy as np

        if isinstance(image, ValidatedImage):
            return image.sha256
        if isinstance(image, _BYTES):
            return content_hash(image) if len(memoryview(image).cast("B")) <= self.max_bytes else None
        if isinstance(image, (str, os.PathLike)):
            return self._path(Path(image))
        if isinstance(image, np.ndarray):
            arr = np.ascontiguousarray(image)
            if arr.dtype.hasobject or arr.nbytes > self.max_bytes:
                return None
            return content_hash(memoryview(arr).cast("B")) + f":nd{arr.shape}{arr.dtype}"
        return None

    def check_unchanged(self, image: Any, key: str | None, decoded: Any) -> None:
        """A file whose bytes no longer match the digest remembered for its stat is refused, never cached wrongly."""
        if isinstance(image, (str, os.PathLike)) and key is not None and isinstance(decoded, ValidatedImage) \
                and decoded.sha256 != key:
            from amulet_lab.errors import ProcessingError

            self.forget(image)
            raise ProcessingError(f"{Path(image).name} changed while it was read; classify it again", stage="decode",
                                  code="E_FILE_CHANGED", context={"path": str(image)})

    def forget(self, path: str | os.PathLike[str]) -> None:
        """Drop what is remembered of ``path`` (its content was found to differ from its digest)."""
        resolved = str(Path(path).resolve())
        with self._lock:
            for ident in [i for i in self._paths if i[0] == resolved]:
                del self._paths[ident]

    def _path(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None  # the decoder reports the missing file with its own code
        if not path.is_file() or st.st_size > self.max_bytes:
            return None
        ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            key = self._paths.get(ident)
            if key is not None:
                self._paths.move_to_end(ident)
                return key
        from amulet_lab.files import hash_stream

        key = hash_stream(path, algo="sha256", digest_size=None, chunk_size=1 << 20)
        with self._lock:
            self._paths[ident] = key
            while len(self._paths) > PATH_KEYS_MAX:
                self._paths.popitem(last=False)
        return key
