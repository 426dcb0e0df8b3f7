"""``apply_settings``: the edges' one call that gives the process-wide instances their settings.

The design document's process-wide objects (``memory.memory_monitor``, ``memory.streaming_handler``,
``threads.get_thread_pool_manager()``) are built from the documented defaults and read no settings
themselves. Each edge (the CLI, the service, the widgets, the benchmarks, a notebook's first cell)
reads the settings once and calls this, so AMULET_MEMORY_*, AMULET_CACHE_SHRINK_FRACTION,
AMULET_THREAD_POOL_SIZE, AMULET_CHUNK_SIZE and the image limits act on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amulet_lab.config import Settings

__all__ = ["apply_settings"]


def apply_settings(settings: Settings) -> None:
    """Configure the process-wide memory monitor, streaming handler and thread pools from ``settings``."""
    from amulet_lab import memory
    from amulet_lab.config import Settings
    from amulet_lab.errors import ValidationError
    from amulet_lab.security import ImageLimits
    from amulet_lab.threads import get_thread_pool_manager

    if not isinstance(settings, Settings):
        raise ValidationError("apply_settings needs a Settings (config.load_settings())", field="settings",
                              value=type(settings).__name__, code="E_CONFIG")
    memory.get_memory_monitor().configure(**memory.MemoryMonitor.settings_values(settings))
    handler = memory.streaming_handler
    handler.limits = ImageLimits.from_settings(settings)
    handler.chunk_size = settings.chunk_size
    get_thread_pool_manager().set_default_workers(settings.thread_pool_size)
