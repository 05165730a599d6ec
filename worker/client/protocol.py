"""The worker's wire protocol: one JSON header frame, then raw little-endian C-order array frames. Never pickle.

This module is shared by the QGIS side (client) and the worker (server), so it imports neither torch nor
factseg_core. The full specification, with examples, is ``worker/PROTOCOL.md``; this module is its code.

A message is a ZeroMQ multipart message ``[header, array_0, array_1, ...]``. The header is a UTF-8 JSON object::

    {"v": 1, "op": "segment", "id": "<message id>", ..., "arrays": [{"name", "dtype", "shape"}, ...]}

and ``arrays`` describes the following frames one by one. Every size is bounded (:class:`Limits`), so a
malformed or hostile message costs the receiver a bounded amount of work and an error reply naming the problem.
"""
from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

#: Bumped on any incompatible change of the messages below.
PROTOCOL_VERSION = 1

#: Operations a client may request.
OPS = ("info", "ping", "plan", "segment", "cancel",
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
    "bad_chunk",  # a segment chunk that is not the worker's plan
    "queue_full",
    "cancelled",
    "shutdown",  # the worker is stopping; the chunk was not processed (retry elsewhere)
    "inference_failed",
    "bad_file",  # a training upload that is not an export's layout, out of order, or incomplete
    "busy_training",  # the worker is fine-tuning; the message gives the ETA
    "unknown_job",
    "no_result",
    "training_failed",
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
    max_patch: int = 4096
    max_queue_per_client: int = 64
    #: Pixels held by queued chunks of all clients together (a bound on the worker's memory).
    max_queued_bytes: int = 2 * 1024**3
    #: Plan and reply headers can be longer than requests (a plan lists every chunk).
    max_reply_header_bytes: int = 64 * 1024 * 1024

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
    read-only). Checks: header size, JSON object, version, op, one descriptor per frame, dtype allow-list,
    shape sanity and byte length == prod(shape) × itemsize.
    """
    if not frames:
        raise ProtocolError("empty message")
    raw = _as_buffer(frames[0])
    max_header = limits.max_reply_header_bytes if reply else limits.max_header_bytes
    if len(raw) > max_header:
        raise ProtocolError(f"header frame is {len(raw)} bytes, limit is {max_header}", "header_too_large")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header frame is not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported; this side speaks version {PROTOCOL_VERSION}",
            "unsupported_version",
        )
    op = header.get("op", "" if reply else None)
    if not isinstance(op, str):
        raise ProtocolError("header field 'op' must be a string")
    if not reply and op not in OPS:
        raise ProtocolError(f"unknown operation {op[:64]!r}; known: {', '.join(OPS)}", "unknown_op")
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


def _as_buffer(frame: Any) -> memoryview:
    if isinstance(frame, (bytes, bytearray)):
        return memoryview(frame)
    if isinstance(frame, memoryview):
        return frame
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    if buffer is not None:
        return memoryview(buffer)
    raise ProtocolError(f"frame of type {type(frame).__name__} is not a byte buffer")


def _decode_array(desc: Any, buf: memoryview, limits: Limits) -> tuple[str, np.ndarray]:
    if not isinstance(desc, dict):
        raise ProtocolError("array descriptor must be an object {name, dtype, shape}", "bad_array")
    name, dtype_name, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ProtocolError("array descriptor needs a 'name' string of 1..64 characters", "bad_array")
    if dtype_name not in WIRE_DTYPES:
        raise ProtocolError(
            f"array {name!r}: dtype {str(dtype_name)[:32]!r} not allowed; allowed: {', '.join(WIRE_DTYPES)}", "bad_array"
        )
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4:
        raise ProtocolError(f"array {name!r}: shape must be a list of 1 to 4 dimensions", "bad_array")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"array {name!r}: shape {str(shape)[:80]} must hold non-negative integers", "bad_array")
    dtype = WIRE_DTYPES[dtype_name]
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limits.max_frame_bytes:
        raise ProtocolError(
            f"array {name!r}: {nbytes} bytes declared, limit is {limits.max_frame_bytes}", "too_large"
        )
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


def check_window(value: Any, what: str) -> tuple[int, int, int, int]:
    """A [y0, x0, y1, x1] list of ints with y0 < y1 and x0 < x1, else ProtocolError."""
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ProtocolError(f"{what} must be a list of four integers [y0, x0, y1, x1]")
    y0, x0, y1, x1 = value
    if not (0 <= y0 < y1 and 0 <= x0 < x1):
        raise ProtocolError(f"{what} {value} is empty or negative")
    return y0, x0, y1, x1


def check_int(header: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    """An integer header field within [low, high] (or ``default`` when absent), else ProtocolError."""
    value = header.get(key, default)
    if value is None:
        raise ProtocolError(f"header field {key!r} is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"header field {key!r} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"header field {key!r} = {value} is outside [{low}, {high}]", "too_large" if value > high else "bad_header")
    return value


def check_str(header: Mapping[str, Any], key: str, max_len: int = 128) -> str:
    """A non-empty string header field of bounded length, else ProtocolError."""
    value = header.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(f"header field {key!r} must be a string of 1..{max_len} characters")
    return value


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address (127.0.0.0/8, ::1, localhost).

    ``tcp://*:5555``, ``tcp://0.0.0.0:…`` and interface names are not loopback: they expose the worker.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = [
    "DEFAULT_LIMITS",
    "ERROR_CODES",
    "Limits",
    "Message",
    "OPS",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RemoteError",
    "SegmentationCancelled",
    "WIRE_DTYPES",
    "WorkerError",
    "WorkerUnavailable",
    "check_int",
    "check_str",
    "check_window",
    "decode",
    "encode",
    "error_header",
    "is_loopback_endpoint",
]
