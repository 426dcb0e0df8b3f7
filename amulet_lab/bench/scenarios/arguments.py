"""The scenarios' argument checks (one validator per kind of knob) and their progress bar."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from amulet_lab.errors import ValidationError

__all__ = ["check_int", "check_pos", "check_duration", "check_images", "progress_bar"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is a whole number >= ``minimum``, else ``ValidationError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValidationError(f"{name} must be a whole number >= {minimum}, got {value!r}", field=name, value=value)
    return value


def check_pos(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else ``ValidationError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValidationError(f"{name} must be a number > 0, got {value!r}", field=name, value=value)
    return float(value)


def check_duration(name: str, value: Any) -> float:
    """A duration in seconds in [0, 3600): the one validator of every ``min_duration_s``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise ValidationError(f"{name} must be a number of seconds in [0, 3600), got {value!r}", field=name, value=value)
    return float(value)


def check_images(images: Sequence[Any]) -> list[Any]:
    """``images`` as a list, refused (``E_NO_SAMPLES``) when empty."""
    items = list(images)
    if not items:
        raise ValidationError("a scenario needs at least one image", field="images", code="E_NO_SAMPLES")
    return items


def progress_bar(iterable: Any = None, *, total: int | None = None, desc: str, enabled: bool) -> Any:
    """A tqdm bar (hidden unless ``enabled``) that leaves no line behind."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)
