"""The trainer's structured events (``run/events.jsonl``, written by ``training.train_log.EventLog``), read back.

The worker learns a job's progress and its cause of failure from these JSON lines, never from the human log:
``progress`` (iteration, loss, a smoothed ETA, from the first iteration on), ``phase``, ``evaluation``,
``failed`` (one sentence, and a ``kind`` such as ``no_space`` or ``data``) and ``done``. Reading is incremental
and bounded (a few hundred KiB per poll, long lines skipped), so a huge or broken file costs little.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_READ_BYTES = 512 * 1024
MAX_LINE_BYTES = 64 * 1024
#: Reasons longer than this are cut: a sentence, not a traceback.
MAX_MESSAGE_CHARS = 400


class EventReader:
    """What the events file has said so far (call :meth:`poll` to read what was added)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""
        self.progress: dict[str, Any] = {}
        self.phase: str | None = None
        self.evaluation: dict[str, Any] | None = None
        self.failure: dict[str, str] | None = None
        self.done = False

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(MAX_READ_BYTES)
        except OSError:
            return
        self.offset += len(chunk)
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) > MAX_LINE_BYTES:
            self.pending = b""
        for line in lines:
            if 0 < len(line) <= MAX_LINE_BYTES:
                self._apply(line)

    def _apply(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "progress":
            self.progress = {key: _number(event.get(key)) for key in ("iteration", "loss", "eta_s")}
            self.progress["iteration"] = int(self.progress["iteration"] or 0)
        elif kind == "phase" and isinstance(event.get("phase"), str):
            self.phase = event["phase"][:40]
        elif kind == "evaluation":
            self.evaluation = {k: _number(event.get(k)) for k in ("miou", "fg_miou")}
        elif kind == "failed":
            self.failure = {"message": str(event.get("message") or "training failed")[:MAX_MESSAGE_CHARS],
                            "kind": str(event.get("kind") or "error")[:40]}
        elif kind == "done":
            self.done = True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value
