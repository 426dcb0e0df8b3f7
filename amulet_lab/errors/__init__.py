"""Errors and resilience: the error tree, ``retry_on_failure``, ``CircuitBreaker``, ``error_context``.

See ``_exceptions.py`` for the diagram of the error tree.
"""

from amulet_lab.errors._breaker import CircuitBreaker
from amulet_lab.errors._context import error_context
from amulet_lab.errors._exceptions import (
    AmuletError,
    CircuitOpenError,
    LockTimeoutError,
    MemoryBudgetExceeded,
    ModelError,
    NetworkError,
    ProcessingError,
    SecurityError,
    ValidationError,
)
from amulet_lab.errors._retry import RetryPolicy, is_testing, retry_on_failure, set_testing

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
    "retry_on_failure",
    "RetryPolicy",
    "set_testing",
    "is_testing",
    "CircuitBreaker",
    "error_context",
]
