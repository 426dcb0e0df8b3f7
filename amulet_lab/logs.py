"""Logging for the ``amulet_lab`` logger: text or JSON lines, set up only at the edge."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["configure_logging", "JsonFormatter"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_HANDLER_FLAG = "_amulet_lab_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=repr, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> logging.Logger:
    """Give the ``amulet_lab`` logger one handler (text or json); calling again replaces it. Never touches root."""
    from amulet_lab.errors import ValidationError

    if fmt not in ("text", "json"):
        raise ValidationError(f"log format must be text or json, got {fmt!r}", field="fmt", value=fmt)
    if str(level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValidationError(f"unknown log level {level!r}", field="level", value=level)
    level = str(level).upper()
    logger = logging.getLogger("amulet_lab")
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
