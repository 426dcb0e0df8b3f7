"""The one per-request core of the HTTP benchmarks: send a photo to ``/predict``, classify the outcome.

``scenarios.server(url=...)`` (open loop, Poisson arrivals) and ``load.arun_load`` (closed loop)
both go through ``post_predict``, so they agree on what counts as answered, refused and lost:

- an HTTP answer of any status is *answered* (502/503/504, which ``HttpPool`` raises as
  ``NetworkError`` after its retries, included: the status is in the error's context);
- a 429 is *refused*, with the ``Retry-After`` the service asked for (the caller backs off);
- no answer at all (transport failure after the retries, or the circuit breaker refused the
  call) is *lost*, with the error code as the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from amulet_lab.errors import CircuitOpenError, NetworkError

__all__ = ["Outcome", "post_predict", "bearer_headers"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one ``POST /predict`` came to: a status (None when lost), the JSON body of a 200, the back-off."""

    status: int | None
    body: Any = None
    retry_after_s: float = 0.0
    lost_reason: str | None = None

    @property
    def ok(self) -> bool:
        """A 200 answer."""
        return self.status == 200

    @property
    def refused(self) -> bool:
        """A 429 answer (rate limited)."""
        return self.status == 429

    @property
    def lost(self) -> bool:
        """No HTTP answer at all."""
        return self.status is None


def bearer_headers(token: str | None = None, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``Authorization: Bearer <token>`` when a token is given."""
    out = dict(headers or {})
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def _retry_after(value: str | None) -> float:
    # Retry-After may also be an HTTP date; the service sends seconds, anything else falls back to 1 s.
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


async def post_predict(
    pool: Any, path: str, data: bytes, *, headers: Mapping[str, str] | None = None, filename: str = "front.jpg"
) -> Outcome:
    """Send ``data`` as the multipart ``front`` file to ``path`` through ``pool`` (an ``HttpPool``)."""
    try:
        response = await pool.post(path, files={"front": (filename, data, "image/jpeg")}, headers=dict(headers or {}))
    except NetworkError as exc:
        status = exc.context.get("status")
        if isinstance(status, int):  # an answer (502/503/504) the pool turned into an error after its retries
            return Outcome(status)
        return Outcome(None, lost_reason=exc.code)
    except CircuitOpenError as exc:
        return Outcome(None, lost_reason=exc.code, retry_after_s=float(exc.retry_after_s))
    if response.status_code == 429:
        return Outcome(429, retry_after_s=_retry_after(response.headers.get("Retry-After")))
    body = response.json() if response.status_code == 200 else response.text[:200]
    return Outcome(response.status_code, body)
