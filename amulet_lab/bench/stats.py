"""The order statistics the bench uses everywhere: one ``percentile`` and one ``quartiles``.

One definition, so that a p99 in a scenario, the IQR band ``compare`` judges with and the band
``plots`` draws are the same numbers (linear interpolation between closest ranks, numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "quartiles"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (``percentile`` 25 and 75); both equal the value for one value."""
    return percentile(values, 25), percentile(values, 75)
