"""The ``train_*`` operations of the wire protocol: fine-tuning on a worker, typed and bounded.

A client uploads an exported training folder (``factseg:export_training_data``) file by file in bounded pieces,
starts the run, polls its progress, may cancel it, and downloads the checkpoint in pieces:

    train_begin  {files, bytes, iterations, init_from, preset?, overrides?}  → {job, token, piece_bytes}
    train_file   {job, token, name, offset, size} + array "data" (uint8, one piece) → {received}
    train_start  {job, token}                                                    → {state}
    train_status {job, token}                                                    → {state, iteration, ...}
    train_cancel {job, token}                                                    → {state}
    train_result {job, token, offset}  → {size, eval} + array "data" (one piece of final.pt)

A job belongs to the client that began it: every later op carries the secret ``token`` that ``train_begin``
returned (and, on a CURVE worker, comes from the same client key). The training configuration is never a file
the client chooses: a preset *name* of the worker's own and type-checked ``overrides`` (see
``worker.server.training_config``).

Only the layout of an export may be uploaded (``classes.json``, ``config.yaml``, ``init.pt``,
``{train,val}/{images,masks}/NAME.png``): names are checked against that pattern, so no upload can reach a path
outside the job's own folder. Counts and sizes are bounded below and checked before anything is written.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..contract import CLASSES_FILE, IMAGES_DIR, MASKS_DIR, SPLITS
from .fields import Request, check_int, check_str
from .wire import Message, ProtocolError

TRAIN_OPS = ("train_begin", "train_file", "train_start", "train_status", "train_cancel", "train_result")
#: Bytes of one uploaded or downloaded piece (well under the frame limit; a few pieces per second on a LAN).
PIECE_BYTES = 4 * 1024 * 1024
MAX_TRAIN_FILES = 50_000
MAX_TRAIN_BYTES = 16 * 1024**3
MAX_FILE_BYTES = 1024**3
MAX_ITERATIONS = 1_000_000
INIT_CHOICES = ("served", "upload", "scratch")
#: A preset is named, never a path: letters, digits, ``_`` and ``-``.
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TOKEN = re.compile(r"^[0-9a-f]{32,64}$")
#: Files an upload may hold: the export's layout, an optional config and an optional initial checkpoint.
FILE_NAME = re.compile(rf"^({re.escape(CLASSES_FILE)}|config\.yaml|init\.pt|({'|'.join(SPLITS)})/({IMAGES_DIR}|{MASKS_DIR})/"
                       r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.png)$")
#: States of a training job, in order; the last three are final.
STATES = ("uploading", "running", "done", "failed", "cancelled")


@dataclass(frozen=True, kw_only=True)
class TrainBegin(Request):
    """Open a training job: what will be uploaded and how long to train."""

    OP: ClassVar[str] = "train_begin"
    files: int
    bytes: int
    iterations: int
    init_from: str = "served"
    preset: str | None = "auto"
    overrides: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class TrainFile(Request):
    """One piece of one uploaded file (pieces of a file arrive in order)."""

    OP: ClassVar[str] = "train_file"
    job: str
    token: str | None = None
    name: str
    offset: int
    size: int
    data: np.ndarray = field(metadata={"array": True}, repr=False)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"data": self.data}


@dataclass(frozen=True, kw_only=True)
class TrainStart(Request):
    OP: ClassVar[str] = "train_start"
    job: str
    token: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainStatus(Request):
    OP: ClassVar[str] = "train_status"
    job: str
    token: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainCancel(Request):
    OP: ClassVar[str] = "train_cancel"
    job: str
    token: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainResult(Request):
    """One piece of the trained model, from ``offset``."""

    OP: ClassVar[str] = "train_result"
    job: str
    token: str | None = None
    offset: int = 0


def _job(header: Mapping[str, Any]) -> str:
    job = check_str(header, "job", 64)
    if not re.fullmatch(r"[0-9a-f]{32}", job):
        raise ProtocolError("header field 'job' is not a training job id")
    return job


def _token(header: Mapping[str, Any]) -> str | None:
    """The job's secret (absent: the worker answers ``not_owner``, as for a wrong one)."""
    token = header.get("token")
    if token is None:
        return None
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise ProtocolError("header field 'token' is not a training job token")
    return token


def _begin(header: Mapping[str, Any], msg_id: str | None) -> TrainBegin:
    init_from = header.get("init_from", "served")
    if init_from not in INIT_CHOICES:
        raise ProtocolError(f"header field 'init_from' must be one of {', '.join(INIT_CHOICES)}")
    preset = header.get("preset", "auto")
    if preset is not None and (not isinstance(preset, str) or not PRESET_NAME.fullmatch(preset)):
        raise ProtocolError("header field 'preset' must be the name of one of the worker's training presets "
                            "(letters, digits, '_' and '-'; never a path)", "bad_config")
    overrides = header.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise ProtocolError("header field 'overrides' must be an object of sections {train: {...}, ...}",
                            "bad_config")
    return TrainBegin(id=msg_id, files=check_int(header, "files", 1, MAX_TRAIN_FILES),
                      bytes=check_int(header, "bytes", 1, MAX_TRAIN_BYTES),
                      iterations=check_int(header, "iterations", 0, MAX_ITERATIONS), init_from=str(init_from),
                      preset=preset, overrides=overrides)


def parse_train_request(message: Message, msg_id: str | None) -> Request:
    """The typed request of a ``train_*`` message (framing, version and op already checked by ``decode``)."""
    header, op = message.header, message.op
    if op == "train_file":
        return _parse_file(message, msg_id)
    if message.arrays:
        raise ProtocolError(f"{op} carries no arrays", "bad_array")
    if op == "train_begin":
        return _begin(header, msg_id)
    if op == "train_result":
        return TrainResult(id=msg_id, job=_job(header), token=_token(header),
                           offset=check_int(header, "offset", 0, 1 << 40))
    kinds = {"train_start": TrainStart, "train_status": TrainStatus, "train_cancel": TrainCancel}
    if op not in kinds:
        raise ProtocolError(f"unknown training operation {op[:40]!r}", "unknown_op")
    return kinds[op](id=msg_id, job=_job(header), token=_token(header))


def _parse_file(message: Message, msg_id: str | None) -> TrainFile:
    header = message.header
    name = check_str(header, "name", 240)
    if not FILE_NAME.fullmatch(name):
        raise ProtocolError(f"file name {name[:80]!r} is not part of a training export's layout", "bad_file")
    data = message.arrays.get("data")
    if data is None or set(message.arrays) != {"data"} or data.dtype.name != "uint8" or data.ndim != 1:
        raise ProtocolError("train_file carries exactly one 1-D uint8 array named 'data'", "bad_array")
    request = TrainFile(id=msg_id, job=_job(header), token=_token(header), name=name, offset=check_int(header, "offset", 0, MAX_FILE_BYTES),
                        size=check_int(header, "size", 1, MAX_FILE_BYTES), data=data)
    if not 0 < data.size <= PIECE_BYTES or request.offset + data.size > request.size:
        raise ProtocolError(f"a piece holds 1..{PIECE_BYTES} bytes inside the file's declared size", "too_large")
    return request
