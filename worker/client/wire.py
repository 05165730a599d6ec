"""The wire format: one JSON header frame, then raw little-endian C-order array frames. Never pickle.

Shared by the QGIS side (client) and the worker (server), so it imports neither torch nor factseg_core.
``worker.client.protocol`` re-exports everything here and adds the typed requests; the specification, with
examples, is ``worker/PROTOCOL.md``.

A message is a ZeroMQ multipart message ``[header, array_0, array_1, ...]``. The header is a UTF-8 JSON object::

    {"v": 2, "op": "segment", "id": "<message id>", ..., "arrays": [{"name", "dtype", "shape"}, ...]}

and ``arrays`` describes the following frames one by one. Every size is bounded (:class:`Limits`), so a
malformed or hostile message costs the receiver a bounded amount of work and an error reply naming the problem.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import MAX_PATCH

#: Bumped on any incompatible change of the messages below (2: ``plan`` removed, ``open`` is the only handshake).
PROTOCOL_VERSION = 2

#: Operations a client may request.
OPS = ("info", "ping", "open", "segment", "cancel",
       "train_begin", "train_file", "train_start", "train_status", "train_cancel", "train_result")

#: Array dtypes allowed on the wire (names as numpy spells them); multi-byte types are little endian.
WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
    "float32": np.dtype("<f4"),
}

#: Error codes a worker answers with (``RemoteError.code``).
ERROR_CODES = (
    "bad_header",  # not a JSON object, wrong types, missing fields
    "header_too_large",
    "unsupported_version",
    "unknown_op",
    "bad_array",  # dtype/shape/length do not match the descriptor, or the op
    "too_large",  # arrays or image beyond the worker's limits
    "too_many_frames",  # more frames in one message than 1 header + max_arrays (the rest was discarded)
    "message_too_large",  # frames adding up to more than max_message_bytes (the rest was discarded)
    "bad_chunk",  # a segment chunk that is not the worker's plan
    "queue_full",
    "cancelled",
    "expired",  # the client sent no keep-alive within its lease: its chunks were dropped (resend to continue)
    "shutdown",  # the worker is stopping; the chunk was not processed (retry elsewhere)
    "inference_failed",
    "bad_file",  # a training upload that is not an export's layout, out of order, or incomplete
    "busy_training",  # the worker is fine-tuning; the message gives the ETA
    "unknown_job",
    "no_result",
    "training_failed",
    "not_owner",  # a train_* op on a job another client began (wrong token, or another CURVE key)
    "no_space",  # the worker's disk cannot hold the upload (or a piece hit a full disk: resend later)
    "bad_config",  # a training preset or override that is unknown, mistyped, out of range, or a path
    "internal",
)


@dataclass(frozen=True)
class Limits:
    """Bounds on what a worker accepts; sent in ``info`` so clients can check before sending."""

    max_header_bytes: int = 64 * 1024
    max_arrays: int = 4
    max_frame_bytes: int = 256 * 1024 * 1024
    max_image_side: int = 1_000_000
    max_chunk_side: int = 8192
    max_patch: int = MAX_PATCH
    max_queue_per_client: int = 64
    #: Pixels held by queued chunks of all clients together (a bound on the worker's memory).
    max_queued_bytes: int = 2 * 1024**3
    #: Reply headers can be longer than requests (an ``open`` reply lists every chunk of the plan).
    max_reply_header_bytes: int = 64 * 1024 * 1024
    #: Header plus array frames of one message; receiving stops buffering beyond it (and beyond max_frames).
    max_message_bytes: int = 384 * 1024 * 1024

    @property
    def max_frames(self) -> int:
        """Frames of one message after its routing envelope: the header and one frame per array."""
        return 1 + self.max_arrays

    def max_total(self, reply: bool) -> int:
        """Bytes one message may hold: replies may add a long header (an ``open`` reply) to the largest arrays."""
        return self.max_message_bytes + (self.max_reply_header_bytes if reply else 0)

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def for_frame_limit(cls, max_frame_bytes: int) -> Limits:
        """Limits of a worker whose largest array frame is ``max_frame_bytes`` (``--max-message-mb``).

        A segment request holds pixels (3 bytes a pixel) and a mask (1 byte), so its arrays are at most
        4/3 of the largest frame; a reply (classes and confidence) at most 5/4 of it.
        """
        return cls(max_frame_bytes=max_frame_bytes,
                   max_message_bytes=max_frame_bytes * 3 // 2 + cls.max_header_bytes)


DEFAULT_LIMITS = Limits()


class WorkerError(RuntimeError):
    """Base of every error the worker client raises."""


class ProtocolError(WorkerError):
    """A malformed or unsupported message (``code`` says which rule it broke)."""

    def __init__(self, message: str, code: str = "bad_header") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(WorkerError):
    """The worker answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"worker error [{code}]: {message}")
        self.code = code
        self.message = message


class WorkerUnavailable(WorkerError):
    """No answer from the worker(s) within the timeout, after the allowed retries."""


class SegmentationCancelled(WorkerError):
    """The segmentation was cancelled (by the user or by the worker shutting down)."""


@dataclass
class Message:
    """A decoded message: the header dict and its arrays by name (in wire order)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def op(self) -> str:
        return str(self.header.get("op", ""))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {clip(text, 24)} is out of range")
    return value


def clip(value: Any, limit: int = 64) -> str:
    """``value`` as text of at most ``limit`` characters: a peer's strings never go unbounded into logs or replies."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_int(value: Any) -> bool:
    """A JSON integer (``true`` and ``1.0`` are not)."""
    return type(value) is int


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """Frames of one message: header (with version and array descriptors filled in) and the array buffers."""
    head = dict(header)
    head.setdefault("v", PROTOCOL_VERSION)
    frames: list[bytes | memoryview] = []
    descriptors = []
    for name, array in (arrays or {}).items():
        wire = _wire_array(array)
        descriptors.append({"name": name, "dtype": _dtype_name(wire.dtype), "shape": list(wire.shape)})
        frames.append(memoryview(wire).cast("B") if wire.size else b"")
    if descriptors:
        head["arrays"] = descriptors
    text = json.dumps(head, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return [text, *frames]


def _dtype_name(dtype: np.dtype) -> str:
    for name, wire in WIRE_DTYPES.items():
        if dtype == wire:
            return name
    raise ProtocolError(f"dtype {dtype} cannot be sent; allowed: {', '.join(WIRE_DTYPES)}", "bad_array")


def _wire_array(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    for wire in WIRE_DTYPES.values():
        if array.dtype.kind == wire.kind and array.dtype.itemsize == wire.itemsize:
            return np.ascontiguousarray(array, dtype=wire)
    raise ProtocolError(f"dtype {array.dtype} cannot be sent; allowed: {', '.join(WIRE_DTYPES)}", "bad_array")


def decode(frames: Sequence[bytes | memoryview | Any], limits: Limits = DEFAULT_LIMITS, *, reply: bool = False) -> Message:
    """Parse and validate one message (without its routing envelope); raise ProtocolError naming the problem.

    ``frames`` may be bytes or pyzmq ``Frame`` objects (zero-copy: arrays then view the frame's buffer and are
    read-only). Checks: header size, JSON object with finite numbers, integer version, op, one descriptor per
    frame, dtype allow-list, bounded shape and byte length == prod(shape) × itemsize.
    """
    if not frames:
        raise ProtocolError("empty message")
    header = _decode_header(_as_buffer(frames[0]), limits.max_reply_header_bytes if reply else limits.max_header_bytes)
    version = header.get("v")
    if not is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {clip(repr(version), 32)} is not supported; this side speaks version {PROTOCOL_VERSION}",
            "unsupported_version",
        )
    op = header.get("op", "" if reply else None)
    if not isinstance(op, str):
        raise ProtocolError("header field 'op' must be a string")
    if not reply and op not in OPS:
        raise ProtocolError(f"unknown operation {clip(op)!r}; known: {', '.join(OPS)}", "unknown_op")
    descriptors = header.get("arrays", [])
    if not isinstance(descriptors, list):
        raise ProtocolError("header field 'arrays' must be a list")
    if len(descriptors) > limits.max_arrays:
        raise ProtocolError(f"{len(descriptors)} arrays, limit is {limits.max_arrays}", "too_large")
    if len(descriptors) != len(frames) - 1:
        raise ProtocolError(
            f"header describes {len(descriptors)} arrays but {len(frames) - 1} array frames followed", "bad_array"
        )
    arrays: dict[str, np.ndarray] = {}
    for desc, frame in zip(descriptors, frames[1:]):
        name, array = _decode_array(desc, _as_buffer(frame), limits)
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice", "bad_array")
        arrays[name] = array
    return Message(header, arrays)


def _decode_header(raw: memoryview, max_header: int) -> dict[str, Any]:
    if len(raw) > max_header:
        raise ProtocolError(f"header frame is {len(raw)} bytes, limit is {max_header}", "header_too_large")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON: {clip(str(exc), 200)}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def peek_id(frame: Any, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """The ``id`` of a header frame that is otherwise unusable (e.g. its message broke a limit), if it has one."""
    try:
        value = _decode_header(_as_buffer(frame), limits.max_header_bytes).get("id")
    except ProtocolError:
        return None
    return value if isinstance(value, str) and len(value) <= 128 else None


def _as_buffer(frame: Any) -> memoryview:
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    if isinstance(frame, memoryview):
        return frame
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if buffer is not None:
        return memoryview(buffer)
    raise ProtocolError(f"frame of type {type(frame).__name__} is not a byte buffer")


#: Largest dimension of any wire array (also for zero-size arrays, whose other dimensions cost nothing).
MAX_DIMENSION = 2**31 - 1


def _decode_array(desc: Any, buf: memoryview, limits: Limits) -> tuple[str, np.ndarray]:
    if not isinstance(desc, dict):
        raise ProtocolError("array descriptor must be an object {name, dtype, shape}", "bad_array")
    name, dtype_name, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ProtocolError("array descriptor needs a 'name' string of 1..64 characters", "bad_array")
    if not isinstance(dtype_name, str) or dtype_name not in WIRE_DTYPES:
        raise ProtocolError(
            f"array {name!r}: dtype {clip(dtype_name, 32)!r} not allowed; allowed: {', '.join(WIRE_DTYPES)}",
            "bad_array",
        )
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4:
        raise ProtocolError(f"array {name!r}: shape must be a list of 1 to 4 dimensions", "bad_array")
    if not all(is_int(d) and d >= 0 for d in shape):
        raise ProtocolError(f"array {name!r}: shape {clip(shape, 80)} must hold non-negative integers", "bad_array")
    if max(shape) > MAX_DIMENSION:
        raise ProtocolError(f"array {name!r}: shape {clip(shape, 80)} has a dimension over {MAX_DIMENSION}",
                            "bad_array")
    dtype = WIRE_DTYPES[dtype_name]
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limits.max_frame_bytes:
        raise ProtocolError(
            f"array {name!r}: {nbytes} bytes declared, limit is {limits.max_frame_bytes}", "too_large"
        )
    if nbytes == 0 and math.prod(max(d, 1) for d in shape) * dtype.itemsize > limits.max_frame_bytes:
        raise ProtocolError(f"array {name!r}: zero-size shape {clip(shape, 80)} has dimensions beyond the limits",
                            "bad_array")
    if len(buf) != nbytes:
        raise ProtocolError(
            f"array {name!r}: frame has {len(buf)} bytes but dtype {dtype_name} shape {shape} needs {nbytes}",
            "bad_array",
        )
    array = np.frombuffer(buf, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype=dtype)
    if dtype.kind == "b":
        # A bool byte other than 0/1 is not a valid numpy bool; normalise instead of trusting it.
        array = array.view(np.uint8) != 0
    return name, array


def error_header(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """Header of an error reply (``status`` = "error")."""
    return {"v": PROTOCOL_VERSION, "status": "error", "code": code, "message": message[:2000], **fields}
