"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

An interrupted run leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from amulet_lab.errors import ValidationError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer", "atomic_append_line", "atomic_append_lines",
           "hash_stream",
           "existing_file"]


def _as_path(path: object, field: str = "path") -> Path:
    """``path`` as a Path, or a ``ValidationError`` when it is neither a str nor a PathLike."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValidationError(f"expected a file path, got {path!r}", field=field, value=repr(path))
    return Path(path)


def _create_temp(target: Path) -> tuple[int, str]:
    """Create a new, empty temp file beside ``target`` with mode 0o666 less the umask (as ``open`` does).

    Not ``tempfile.mkstemp``: its 0600 file would need the umask to widen it, and reading the umask means
    setting it process-wide for a moment, which races with other threads creating files.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {target}")  # pragma: no cover - 100 collisions of 48 bits


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit it replaces ``path`` atomically, on error it is removed."""
    target = _as_path(path)
    if mode not in ("w", "wt", "wb"):
        raise ValidationError(f"atomic_writer mode must be 'w', 'wt' or 'wb', got {mode!r}", field="mode", value=mode)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, target.stat().st_mode & 0o7777)  # replacing a file keeps its mode
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(f"atomic_write_bytes needs bytes, got {type(data).__name__}", field="data",
                              value=type(data).__name__)
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    if not isinstance(text, str):
        raise ValidationError(f"atomic_write_text needs a str, got {type(text).__name__}", field="text",
                              value=type(text).__name__)
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_append_line(path: str | Path, line: str) -> Path:
    """Append one line to a text file atomically (see ``atomic_append_lines``)."""
    return atomic_append_lines(path, [line])


def atomic_append_lines(path: str | Path, lines: list[str]) -> Path:
    """Append lines to a text file atomically: the old content plus the lines, swapped in whole.

    A lock file beside it (``fcntl.flock``) serialises writers, so two processes appending at once (a notebook
    and ``bench run``) both land. Rewriting is O(file) per append; history files here hold a few lines per
    run, so that is cheap, and a crash mid-append never leaves a torn or partial run behind.
    """
    import fcntl

    target = _as_path(path)
    if isinstance(lines, (str, bytes)) or not isinstance(lines, (list, tuple)) or not all(
        isinstance(line, str) for line in lines
    ):
        # A bare str would otherwise be appended one character per line.
        raise ValidationError("atomic_append_lines needs a list of str lines", field="lines",
                              value=type(lines).__name__)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(line.rstrip("\n").encode("utf-8") + b"\n" for line in lines)
    with open(target.with_name(f".{target.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = target.read_bytes() if target.exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            return atomic_write_bytes(target, old + payload)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def existing_file(path: str | os.PathLike[str], *, field: str = "path") -> Path:
    """``path`` as a Path when it is a regular file, else a ``ValidationError`` (``E_FILE_NOT_FOUND``)."""
    found = Path(path)
    if not found.is_file():
        raise ValidationError(f"no such file: {found}", field=field, value=str(found), code="E_FILE_NOT_FOUND")
    return found


def hash_stream(
    source: bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes],
    *,
    algo: str = "blake2b",
    digest_size: int | None = 16,
    chunk_size: int = 1 << 16,
) -> str:
    """Hex digest of bytes, a file path or a binary file object, files streamed in ``chunk_size`` chunks.

    BLAKE2b by default: in the standard library, faster than SHA-256 on 64-bit CPUs, and a 16-byte digest is
    ample for content keys. Files are read into one reused buffer, never whole.
    """
    if algo == "blake2b":
        if digest_size is not None and (isinstance(digest_size, bool) or not isinstance(digest_size, int)
                                        or not 1 <= digest_size <= 64):
            raise ValidationError("blake2b digest_size must be an int in 1..64", field="digest_size",
                                  value=digest_size)
        digest = hashlib.blake2b(digest_size=digest_size or 64)
    elif algo in hashlib.algorithms_available:
        digest = hashlib.new(algo)
    else:
        raise ValidationError(f"unknown hash algorithm {algo!r}", field="algo", value=algo, code="E_HASH_ALGO")
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return digest.hexdigest()
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValidationError("chunk_size must be >= 1", field="chunk_size", value=chunk_size)
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with contextlib.ExitStack() as stack:
        if hasattr(source, "readinto"):
            handle = source
        elif isinstance(source, (str, os.PathLike)):
            handle = stack.enter_context(open(existing_file(source), "rb"))
        else:
            raise ValidationError(f"expected bytes, a path or a binary file, got {type(source).__name__}",
                                  field="source", value=type(source).__name__)
        while n := handle.readinto(buffer):  # type: ignore[union-attr]
            digest.update(view[:n])
    return digest.hexdigest()
