"""Receiving one message frame by frame, holding no more than the limits allow (both sides use it).

``recv_multipart`` keeps every frame of a message, however many a peer sends; here frames beyond the
frame-count or total-size limit are read and dropped at once, so what this process holds per message is
bounded by :class:`~worker.client.wire.Limits`, not by the peer. (libzmq delivers a message only once all its
frames have arrived, and each frame is bounded by the socket's ``MAXMSGSIZE``.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
from typing import Any

import zmq

from .wire import Limits


@dataclass
class Received:
    """The frames kept (envelope first), and why the rest was dropped (``code`` None when nothing was)."""

    frames: list[Any] = field(default_factory=list)
    code: str | None = None
    reason: str = ""
    dropped_frames: int = 0
    dropped_bytes: int = 0


def receive(sock: zmq.Socket, limits: Limits, *, reply: bool, envelope: int = 0, flags: int = 0) -> Received:
    """One whole message from ``sock`` (raises zmq.Again with NOBLOCK when none is waiting).

    ``envelope`` routing frames (a ROUTER's identity) are kept apart from the limits; after them come at most
    ``limits.max_frames`` frames (plus one REQ-style empty delimiter) of ``limits.max_total(reply)`` bytes.
    """
    result = Received()
    max_frames = envelope + limits.max_frames
    max_bytes = limits.max_total(reply)
    total = 0
    frame = sock.recv(flags, copy=False)
    while True:
        size, more, kept = len(frame), frame.more, False
        if result.code is None:
            position = len(result.frames)
            if envelope and position == envelope and size == 0 and more:
                max_frames += 1  # a REQ peer's empty delimiter does not count against the limit
            elif position >= envelope:
                total += size
            if position >= max_frames:
                result.code, result.reason = "too_many_frames", f"more than {limits.max_frames} frames in one message"
            elif total > max_bytes:
                result.code = "message_too_large"
                result.reason = f"the message's frames add up to more than {max_bytes} bytes"
            else:
                result.frames.append(frame)
                kept = True
        if not kept:
            result.dropped_frames += 1
            result.dropped_bytes += size
        del frame
        if not more:
            break
        frame = sock.recv(zmq.NOBLOCK, copy=False)  # the rest of the message is already here (atomic delivery)
    if result.code is not None:
        release_memory()
    return result


_LIBC: Any = None


def release_memory() -> None:
    """Give freed heap pages back to the system (glibc), after a large message was dropped."""
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)
