"""Structured logs of the worker: one JSON object per line, every field bounded (peers choose some of them)."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

log = logging.getLogger("factseg.worker")

#: Longest text of one logged field; a peer's strings (ids, versions, reasons) are cut to this.
MAX_FIELD_CHARS = 300


def _bounded(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": _bounded(record.getMessage()),
            **{k: _bounded(v) for k, v in getattr(record, "fields", {}).items()},
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def log_event(level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (each cut to MAX_FIELD_CHARS characters)."""
    log.log(level, event, extra={"fields": fields})


def setup_logging(level: str = "info") -> None:
    """Structured (JSON lines) logging to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("factseg")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
