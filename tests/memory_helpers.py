"""Allocations that really grow RSS, for tests that measure it."""

from __future__ import annotations

import mmap

MB = 2**20


def resident_block(nbytes: int) -> mmap.mmap:
    """``nbytes`` of fresh anonymous memory with every page written, so RSS grows by ``nbytes``.

    Why not ``bytearray(b"\\x01") * n`` or ``np.ones``: malloc serves them from free heap chunks that
    earlier tests left resident, and then RSS does not grow at all (it failed CI that way). A new
    anonymous mapping has no resident pages until written.
    """
    block = mmap.mmap(-1, nbytes)
    chunk = b"\x01" * min(nbytes, MB)  # written a megabyte at a time: no second full-size temporary
    while block.tell() + len(chunk) <= nbytes:
        block.write(chunk)
    block.write(chunk[: nbytes - block.tell()])
    return block
