"""The worker's protocol: the wire format (re-exported from ``wire``) and one typed request per operation.

Both sides use the dataclasses below: the client builds a request and calls :meth:`Request.frames`; the
worker calls :func:`parse_request` on a decoded message and gets the same dataclass back, every field checked
(types, ranges, array shapes), or a :class:`ProtocolError` whose code names the rule broken. Checks that need
the worker's state (its plan, its queue) stay in the worker. Specification: ``worker/PROTOCOL.md``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .endpoints import Endpoint, EndpointError, is_loopback_endpoint, parse_endpoint
from .fields import (
    Request,
    check_flag,
    check_int,
    check_number,
    check_optional_int,
    check_str,
    check_window,
)
from .training_protocol import parse_train_request
from .wire import (
    DEFAULT_LIMITS,
    ERROR_CODES,
    MAX_DIMENSION,
    OPS,
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    Limits,
    Message,
    ProtocolError,
    RemoteError,
    SegmentationCancelled,
    WorkerError,
    WorkerUnavailable,
    clip,
    decode,
    encode,
    error_header,
    is_int,
    peek_id,
)

#: Chunks in one plan (the ``open`` reply lists them all; see PROTOCOL.md "Limits").
MAX_PLAN_CHUNKS = 10_000
#: Bounds of a segment request's keep-alive lease (seconds): silent longer, its chunks are dropped.
LEASE_RANGE_S = (0.5, 3600.0)


@dataclass(frozen=True, kw_only=True)
class InfoRequest(Request):
    """What model the worker serves, its defaults and limits."""

    OP: ClassVar[str] = "info"


@dataclass(frozen=True, kw_only=True)
class PingRequest(Request):
    """Liveness and queue state; naming a ``request`` renews that request's lease (keep-alive)."""

    OP: ClassVar[str] = "ping"
    request: str | None = None


@dataclass(frozen=True, kw_only=True)
class OpenRequest(Request):
    """A job's handshake, in one round trip: the reply is the worker's ``info`` and the chunk plan of the image.

    Absent patch/stride/chunk_size take the worker's model defaults; the reply says what they resolved to.
    """

    OP: ClassVar[str] = "open"
    height: int
    width: int
    patch: int | None = None
    stride: int | None = None
    chunk_size: int | None = None

    def resolved(self, patch: int, stride: int, chunk_size: int, limits: Limits = DEFAULT_LIMITS) -> OpenRequest:
        """The same request with the worker's defaults filled in, checked against each other."""
        out = replace(self, patch=self.patch or patch, stride=self.stride or stride,
                      chunk_size=self.chunk_size or chunk_size)
        check_int(out.header(), "patch", 32, limits.max_patch)
        check_int(out.header(), "stride", 1, out.patch)
        check_int(out.header(), "chunk_size", 1, limits.max_chunk_side)
        if out.chunk_size < out.stride:
            raise ProtocolError(f"chunk_size {out.chunk_size} is smaller than the stride {out.stride}")
        return out


@dataclass(frozen=True, kw_only=True)
class CancelRequest(Request):
    """Drop the queued chunks of ``request`` and stop its running one."""

    OP: ClassVar[str] = "cancel"
    request: str


@dataclass(frozen=True, kw_only=True)
class SegmentRequest(Request):
    """One chunk of a planned image: its place in the plan, options, and the source window's pixels."""

    OP: ClassVar[str] = "segment"
    request: str
    index: int
    image_size: tuple[int, int]
    src: tuple[int, int, int, int]
    out: tuple[int, int, int, int]
    patch: int | None = None
    stride: int | None = None
    chunk_size: int | None = None
    confidence: bool = False
    tta: bool = False
    lease_s: float | None = None
    pixels: np.ndarray = field(metadata={"array": True}, repr=False)
    valid: np.ndarray | None = field(default=None, metadata={"array": True}, repr=False)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pixels": self.pixels} if self.valid is None else {"pixels": self.pixels, "valid": self.valid}

    @property
    def opening(self) -> OpenRequest:
        """The ``open`` of the job this chunk belongs to: its plan is the one the chunk must match."""
        return OpenRequest(height=self.image_size[0], width=self.image_size[1], patch=self.patch,
                           stride=self.stride, chunk_size=self.chunk_size)


def _parse_id(header: Mapping[str, Any]) -> str | None:
    value = header.get("id")
    if value is not None and (not isinstance(value, str) or len(value) > 128):
        raise ProtocolError("header field 'id' must be a string of at most 128 characters")
    return value


def _no_arrays(message: Message) -> None:
    if message.arrays:
        raise ProtocolError(f"'{message.op}' takes no arrays, got {len(message.arrays)}", "bad_array")


def _plan_fields(header: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    return {
        "height": check_int(header, "height", 1, limits.max_image_side),
        "width": check_int(header, "width", 1, limits.max_image_side),
        "patch": check_optional_int(header, "patch", 32, limits.max_patch),
        "stride": check_optional_int(header, "stride", 1, limits.max_patch),
        "chunk_size": check_optional_int(header, "chunk_size", 1, limits.max_chunk_side),
    }


def _parse_segment(message: Message, limits: Limits, msg_id: str | None) -> SegmentRequest:
    header = message.header
    size = header.get("image_size")
    if not (isinstance(size, list) and len(size) == 2):
        raise ProtocolError("header field 'image_size' must be [height, width]")
    plan = _plan_fields({**header, "height": size[0], "width": size[1]}, limits)
    src = check_window(header.get("src"), "src")
    out = check_window(header.get("out"), "out")
    unknown = set(message.arrays) - {"pixels", "valid"}
    if unknown:
        raise ProtocolError(f"unexpected arrays {clip(sorted(unknown), 80)}; segment takes 'pixels' and 'valid'",
                            "bad_array")
    pixels, valid = message.arrays.get("pixels"), message.arrays.get("valid")
    src_h, src_w = src[2] - src[0], src[3] - src[1]
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape != (src_h, src_w, 3):
        got = "nothing" if pixels is None else f"{pixels.dtype} {list(pixels.shape)}"
        raise ProtocolError(f"'pixels' must be uint8 [{src_h}, {src_w}, 3] (the src window), got {got}", "bad_array")
    if valid is not None and (valid.dtype != np.bool_ or valid.shape != (src_h, src_w)):
        raise ProtocolError(f"'valid' must be bool [{src_h}, {src_w}], got {valid.dtype} {list(valid.shape)}",
                            "bad_array")
    return SegmentRequest(
        id=msg_id, request=check_str(header, "request"), index=check_int(header, "index", 0, MAX_PLAN_CHUNKS),
        image_size=(plan["height"], plan["width"]), src=src, out=out, patch=plan["patch"], stride=plan["stride"],
        chunk_size=plan["chunk_size"], confidence=check_flag(header, "confidence"), tta=check_flag(header, "tta"),
        lease_s=check_number(header, "lease_s", *LEASE_RANGE_S), pixels=pixels, valid=valid,
    )


def parse_request(message: Message, limits: Limits = DEFAULT_LIMITS) -> Request:
    """The typed request of a decoded message (``decode`` has checked framing, version and op)."""
    msg_id = _parse_id(message.header)
    if message.op == "segment":
        return _parse_segment(message, limits, msg_id)
    if message.op.startswith("train_"):
        return parse_train_request(message, msg_id)
    _no_arrays(message)
    header = message.header
    if message.op == "info":
        return InfoRequest(id=msg_id)
    if message.op == "ping":
        request = None if header.get("request") is None else check_str(header, "request")
        return PingRequest(id=msg_id, request=request)
    if message.op == "cancel":
        return CancelRequest(id=msg_id, request=check_str(header, "request"))
    if message.op != "open":
        raise ProtocolError(f"unknown operation {clip(message.op)!r}; known: {', '.join(OPS)}", "unknown_op")
    return OpenRequest(id=msg_id, **_plan_fields(header, limits))


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk of the worker's plan: the output window it fills and the source window it needs."""

    index: int
    out: tuple[int, int, int, int]
    src: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return (self.out[2] - self.out[0]) * (self.out[3] - self.out[1])


def parse_plan(rows: Any, height: int, width: int) -> list[PlannedChunk]:
    """The chunks of an ``open`` reply, checked: in order, inside the image, covering every pixel once."""
    if not isinstance(rows, list):
        raise ProtocolError("the plan's 'chunks' is not a list")
    chunks, covered = [], 0
    for position, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 9 and all(is_int(v) for v in row)):
            raise ProtocolError(f"plan entry {position} is not 9 integers")
        chunk = PlannedChunk(row[0], tuple(row[1:5]), tuple(row[5:9]))  # type: ignore[arg-type]
        oy0, ox0, oy1, ox1 = chunk.out
        sy0, sx0, sy1, sx1 = chunk.src
        inside = 0 <= sy0 <= oy0 < oy1 <= sy1 <= height and 0 <= sx0 <= ox0 < ox1 <= sx1 <= width
        if chunk.index != position or not inside:
            raise ProtocolError(f"plan entry {position} is inconsistent: {clip(row, 120)}")
        covered += chunk.area
        chunks.append(chunk)
    if covered != height * width:
        raise ProtocolError(f"the worker's plan covers {covered} pixels of {height * width}")
    return chunks


def plan_rows(chunks: Any) -> list[list[int]]:
    """Plan entries as sent: ``[index, out_y0, out_x0, out_y1, out_x1, src_y0, src_x0, src_y1, src_x1]``."""
    return [[c.index, c.out.y0, c.out.x0, c.out.y1, c.out.x1, c.src.y0, c.src.x0, c.src.y1, c.src.x1] for c in chunks]


__all__ = [
    "DEFAULT_LIMITS", "ERROR_CODES", "LEASE_RANGE_S", "MAX_DIMENSION", "MAX_PLAN_CHUNKS", "OPS", "PROTOCOL_VERSION",
    "WIRE_DTYPES", "CancelRequest", "Endpoint", "EndpointError", "InfoRequest", "Limits", "Message", "OpenRequest",
    "PingRequest", "PlannedChunk", "ProtocolError", "RemoteError", "Request", "SegmentRequest",
    "SegmentationCancelled", "WorkerError", "WorkerUnavailable", "check_flag", "check_int", "check_number",
    "check_optional_int", "check_str", "check_window", "clip", "decode", "encode", "error_header", "is_int",
    "is_loopback_endpoint", "parse_endpoint", "peek_id", "parse_plan", "parse_request", "plan_rows",
]
