"""The ``train_*`` operations of the wire protocol: fine-tuning on a worker, typed and bounded.

A client uploads an exported training folder (``factseg:export_training_data``) file by file in bounded pieces,
starts the run, polls its progress, may cancel it, and downloads the checkpoint in pieces:

    train_begin  {files, bytes, iterations, init_from: "served"|"upload"|"scratch", preset}   → {job, piece_bytes}
    train_file   {job, name, offset, size} + array "data" (uint8, one piece)          → {received}
    train_start  {job}                                                                → {state}
    train_status {job}                                                                → {state, iteration, ...}
    train_cancel {job}                                                                → {state}
    train_result {job, offset}  → {size, eval} + array "data" (one piece of final.pt)

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

from .protocol import Message, ProtocolError, Request, check_int, check_str

TRAIN_OPS = ("train_begin", "train_file", "train_start", "train_status", "train_cancel", "train_result")
#: Bytes of one uploaded or downloaded piece (well under the frame limit; a few pieces per second on a LAN).
PIECE_BYTES = 4 * 1024 * 1024
MAX_TRAIN_FILES = 50_000
MAX_TRAIN_BYTES = 16 * 1024**3
MAX_FILE_BYTES = 1024**3
MAX_ITERATIONS = 1_000_000
INIT_CHOICES = ("served", "upload", "scratch")
#: A fine-tuning preset is a name the worker resolves to a recipe of its own (training/presets.py), never a path;
#: "auto" is the one for the worker's device. ``iterations`` 0 means the preset's own length.
PRESET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: Files an upload may hold: the export's layout, an optional config and an optional initial checkpoint.
FILE_NAME = re.compile(r"^(classes\.json|config\.yaml|init\.pt|(train|val)/(images|masks)/[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.png)$")
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
    preset: str = "auto"


@dataclass(frozen=True, kw_only=True)
class TrainFile(Request):
    """One piece of one uploaded file (pieces of a file arrive in order)."""

    OP: ClassVar[str] = "train_file"
    job: str
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


@dataclass(frozen=True, kw_only=True)
class TrainStatus(Request):
    OP: ClassVar[str] = "train_status"
    job: str


@dataclass(frozen=True, kw_only=True)
class TrainCancel(Request):
    OP: ClassVar[str] = "train_cancel"
    job: str


@dataclass(frozen=True, kw_only=True)
class TrainResult(Request):
    """One piece of the trained model, from ``offset``."""

    OP: ClassVar[str] = "train_result"
    job: str
    offset: int = 0


def _job(header: Mapping[str, Any]) -> str:
    job = check_str(header, "job", 64)
    if not re.fullmatch(r"[0-9a-f]{32}", job):
        raise ProtocolError("header field 'job' is not a training job id")
    return job


def parse_train_request(message: Message, msg_id: str | None) -> Request:
    """The typed request of a ``train_*`` message (framing, version and op already checked by ``decode``)."""
    header, op = message.header, message.op
    if op == "train_file":
        return _parse_file(message, msg_id)
    if message.arrays:
        raise ProtocolError(f"{op} carries no arrays", "bad_array")
    if op == "train_begin":
        init_from = header.get("init_from", "served")
        if init_from not in INIT_CHOICES:
            raise ProtocolError(f"header field 'init_from' must be one of {', '.join(INIT_CHOICES)}")
        preset = header.get("preset", "auto")
        if not isinstance(preset, str) or not PRESET_NAME.fullmatch(preset):
            raise ProtocolError("header field 'preset' must be a preset name such as auto, cpu or gpu")
        return TrainBegin(id=msg_id, files=check_int(header, "files", 1, MAX_TRAIN_FILES),
                          bytes=check_int(header, "bytes", 1, MAX_TRAIN_BYTES),
                          iterations=check_int(header, "iterations", 0, MAX_ITERATIONS), init_from=str(init_from),
                          preset=preset)
    if op == "train_result":
        return TrainResult(id=msg_id, job=_job(header), offset=check_int(header, "offset", 0, 1 << 40))
    kinds = {"train_start": TrainStart, "train_status": TrainStatus, "train_cancel": TrainCancel}
    if op not in kinds:
        raise ProtocolError(f"unknown training operation {op[:40]!r}", "unknown_op")
    return kinds[op](id=msg_id, job=_job(header))


def _parse_file(message: Message, msg_id: str | None) -> TrainFile:
    header = message.header
    name = check_str(header, "name", 240)
    if not FILE_NAME.fullmatch(name):
        raise ProtocolError(f"file name {name[:80]!r} is not part of a training export's layout", "bad_file")
    data = message.arrays.get("data")
    if data is None or set(message.arrays) != {"data"} or data.dtype.name != "uint8" or data.ndim != 1:
        raise ProtocolError("train_file carries exactly one 1-D uint8 array named 'data'", "bad_array")
    request = TrainFile(id=msg_id, job=_job(header), name=name, offset=check_int(header, "offset", 0, MAX_FILE_BYTES),
                        size=check_int(header, "size", 1, MAX_FILE_BYTES), data=data)
    if not 0 < data.size <= PIECE_BYTES or request.offset + data.size > request.size:
        raise ProtocolError(f"a piece holds 1..{PIECE_BYTES} bytes inside the file's declared size", "too_large")
    return request
