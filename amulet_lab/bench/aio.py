"""Running the bench's coroutines from sync code, including inside Jupyter's running event loop.

``asyncio.run`` refuses to start while a loop runs in the thread (every notebook cell does);
there the coroutine runs on a fresh loop in one worker thread, and the cell waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``factory()`` to completion and return its result, loop or no loop in this thread.

    A factory, not a coroutine: the coroutine is then made in the thread whose loop runs it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(factory))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="amulet-bench-loop") as worker:
        return worker.submit(lambda: asyncio.run(_await(factory))).result()


async def _await(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()
