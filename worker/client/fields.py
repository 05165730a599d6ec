"""Checked header fields and the base of every typed request: what ``protocol`` (segmentation ops) and
``training_protocol`` (``train_*`` ops) both build on, so neither needs the other's module to define its own."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .wire import ProtocolError, clip, encode, is_int


def check_window(value: Any, what: str) -> tuple[int, int, int, int]:
    """A [y0, x0, y1, x1] list of ints with y0 < y1 and x0 < x1, else ProtocolError."""
    if not isinstance(value, list) or len(value) != 4 or not all(is_int(v) for v in value):
        raise ProtocolError(f"{what} must be a list of four integers [y0, x0, y1, x1]")
    y0, x0, y1, x1 = value
    if not (0 <= y0 < y1 and 0 <= x0 < x1):
        raise ProtocolError(f"{what} {clip(value, 80)} is empty or negative")
    return y0, x0, y1, x1


def check_int(header: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    """An integer header field within [low, high] (or ``default`` when absent), else ProtocolError."""
    value = header.get(key, default)
    if value is None:
        raise ProtocolError(f"header field {key!r} is required")
    if not is_int(value):
        raise ProtocolError(f"header field {key!r} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"header field {key!r} = {clip(value, 24)} is outside [{low}, {high}]",
                            "too_large" if value > high else "bad_header")
    return value


def check_str(header: Mapping[str, Any], key: str, max_len: int = 128) -> str:
    """A non-empty string header field of bounded length, else ProtocolError."""
    value = header.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(f"header field {key!r} must be a string of 1..{max_len} characters")
    return value


def check_number(header: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    """An optional finite number field within [low, high] (``true`` is not a number), else ProtocolError."""
    value = header.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not low <= value <= high:
        raise ProtocolError(f"header field {key!r} must be a number in [{low:g}, {high:g}], got {clip(value, 24)}")
    return float(value)


def check_flag(header: Mapping[str, Any], key: str) -> bool:
    value = header.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"header field {key!r} must be true or false")
    return value


def check_optional_int(header: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    return None if header.get(key) is None else check_int(header, key, low, high)


@dataclass(frozen=True, kw_only=True)
class Request:
    """Fields every request has: ``id`` (echoed by the reply)."""

    OP: ClassVar[str] = ""
    id: str | None = None

    def header(self) -> dict[str, Any]:
        """The JSON header (without ``v``; arrays are not header fields)."""
        head: dict[str, Any] = {"op": self.OP}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and not item.metadata.get("array"):
                head[item.name] = list(value) if isinstance(value, tuple) else value
        return head

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def frames(self) -> list[Any]:
        """The message's frames, ready to send."""
        return encode(self.header(), self.arrays())
