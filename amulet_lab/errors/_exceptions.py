"""The error tree of amulet_lab.

    AmuletError                 E_AMULET        every error the package raises on purpose
    ├── ValidationError         E_VALIDATION    the caller's input is wrong (never retried)
    │   └── (codes such as E_IMAGE_SIGNATURE, E_IMAGE_TOO_LARGE, E_CONFIG ...)
    ├── ModelError              E_MODEL         a checkpoint cannot be loaded or a model fails
    ├── ProcessingError         E_PROCESSING    a pipeline stage failed (``stage`` says which)
    │   └── MemoryBudgetExceeded E_MEMORY_BUDGET a block went over its memory budget
    ├── NetworkError            E_NETWORK       a dependency over the network failed (retryable)
    ├── SecurityError           E_SECURITY      refused for safety (``severity``); auth, hostile files
    ├── CircuitOpenError        E_CIRCUIT_OPEN  a breaker is open: failing fast (``retry_after_s``)
    └── LockTimeoutError        E_LOCK_TIMEOUT  a named lock was not acquired in time (``holder``)

Every error has a stable ``.code``, a ``.context`` dict, ``.retryable`` and ``.timestamp``,
and ``to_dict()`` gives the structured form the service returns.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

__all__ = [
    "AmuletError",
    "ValidationError",
    "ModelError",
    "ProcessingError",
    "MemoryBudgetExceeded",
    "NetworkError",
    "SecurityError",
    "CircuitOpenError",
    "LockTimeoutError",
]


class AmuletError(Exception):
    """Base of every amulet_lab error: a message, a stable code and context."""

    default_code: ClassVar[str] = "E_AMULET"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        context: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.context: dict[str, Any] = dict(context or {})
        self.retryable = self.default_retryable if retryable is None else retryable
        self.timestamp = time.time()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: type, code, message, context, retryable, timestamp (and cause)."""
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "code": self.code,
            "message": self.message,
            "context": {k: _jsonable(v) for k, v in self.context.items()},
            "retryable": self.retryable,
            "timestamp": self.timestamp,
        }
        if self.__cause__ is not None:
            out["cause"] = f"{type(self.__cause__).__name__}: {self.__cause__}"
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def _exception_kinds(kinds: Any, field: str) -> tuple[type[BaseException], ...]:
    """``kinds`` (None, one exception class, or a tuple or list of them) as a tuple, else a ``ValidationError``.

    Shared by ``retry_on_failure(retry_on=...)`` and ``CircuitBreaker(count=..., exclude=...)``.
    """
    out = () if kinds is None else tuple(kinds) if isinstance(kinds, (tuple, list)) else (kinds,)
    if not all(isinstance(k, type) and issubclass(k, BaseException) for k in out):
        raise ValidationError(f"{field} must be an exception class or a tuple of them, got {kinds!r}",
                              field=field, value=repr(kinds))
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class ValidationError(AmuletError, ValueError):
    """The caller's input (or a setting) is invalid: ``field`` and ``value`` say which."""

    default_code = "E_VALIDATION"

    def __init__(self, message: str, *, field: str | None = None, value: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field
        self.value = value
        if field is not None:
            self.context.setdefault("field", field)
        if value is not None:
            self.context.setdefault("value", value)


class ModelError(AmuletError):
    """A model or checkpoint problem (missing, corrupt, mismatched labels, failed forward pass)."""

    default_code = "E_MODEL"


class ProcessingError(AmuletError):
    """A pipeline stage failed; ``stage`` names it (decode, preprocess, infer, ...)."""

    default_code = "E_PROCESSING"

    def __init__(self, message: str, *, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.stage = stage
        if stage is not None:
            self.context.setdefault("stage", stage)


class MemoryBudgetExceeded(ProcessingError, MemoryError):
    """A block went over its memory budget; ``peak_mb`` and ``budget_mb`` say by how much."""

    default_code = "E_MEMORY_BUDGET"

    def __init__(self, message: str, *, peak_mb: float, budget_mb: float, **kwargs: Any) -> None:
        kwargs.setdefault("stage", "memory")
        super().__init__(message, **kwargs)
        self.peak_mb = peak_mb
        self.budget_mb = budget_mb
        self.context.update(peak_mb=round(peak_mb, 1), budget_mb=budget_mb)


class NetworkError(AmuletError):
    """A call over the network failed; retryable unless said otherwise."""

    default_code = "E_NETWORK"
    default_retryable = True


class SecurityError(AmuletError):
    """Refused for safety; ``severity`` is low, medium, high or critical."""

    default_code = "E_SECURITY"

    def __init__(self, message: str, *, severity: str = "medium", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.severity = severity
        self.context.setdefault("severity", severity)


class CircuitOpenError(AmuletError):
    """A circuit breaker is open; calls fail fast until ``retry_after_s`` has passed."""

    default_code = "E_CIRCUIT_OPEN"

    def __init__(self, message: str, *, name: str = "", retry_after_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.name = name
        self.retry_after_s = retry_after_s
        self.context.update(breaker=name, retry_after_s=round(retry_after_s, 3))


class LockTimeoutError(AmuletError, TimeoutError):
    """A named lock was not acquired in time; ``holder`` names the thread that holds it."""

    default_code = "E_LOCK_TIMEOUT"

    def __init__(self, message: str, *, lock_name: str, holder: str | None, timeout: float | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.lock_name = lock_name
        self.holder = holder
        self.context.update(lock=lock_name, holder=holder, timeout=timeout)
