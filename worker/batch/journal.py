"""What a batch output promises and how far an unfinished one got: the run record and the chunk journal.

* The **record** (model SHA-256, backend, patch, stride, bands, TTA, confidence, raster size) is stored in
  every output's GeoTIFF metadata (``FACTSEG_BATCH``). A final output whose record matches the run is
  finished and is not touched again; one without a record was not written by worker.batch and is never
  overwritten.
* The **journal** ``.<stem>.partial.json`` beside the hidden partial GeoTIFF lists the chunks already in that
  file. It is rewritten (atomically) only after the partial file was flushed, so every chunk it names is on
  disk; a restarted run copies those chunks and computes the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from osgeo import gdal

RECORD_KEY = "FACTSEG_BATCH"
RECORD_VERSION = 1


@dataclass(frozen=True)
class RunRecord:
    """The parameters that decide an output's pixels (the chunk size and which worker computed what do not)."""

    model_sha256: str
    model: str
    backend: str
    patch: int
    stride: int
    bands: tuple[int, int, int]
    tta: bool
    confidence: bool
    size: tuple[int, int]
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RunRecord | None:
        try:
            data = json.loads(text or "")
            data["bands"], data["size"] = tuple(data["bands"]), tuple(data["size"])
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None

    def satisfies(self, wanted: RunRecord) -> bool:
        """True when an output made under this record is what ``wanted`` asks for (confidence: if asked, present)."""
        ignored = {"confidence": None, "model": None}  # the model is its hash; a file name may differ
        return (asdict(self) | ignored) == (asdict(wanted) | ignored) and (self.confidence or not wanted.confidence)


def read_record(path: Path) -> tuple[bool, RunRecord | None]:
    """(readable, record) of an existing output: (False, None) when GDAL cannot open it."""
    try:
        ds = gdal.Open(str(path))
    except RuntimeError:
        return False, None
    if ds is None:
        return False, None
    return True, RunRecord.from_json(ds.GetMetadataItem(RECORD_KEY))


def journal_path(final: Path) -> Path:
    return final.with_name(f".{final.stem}.partial.json")


def resume_path(target: Path) -> Path:
    """Where a partial file is moved while its finished chunks are copied into a fresh partial file."""
    return target.with_name(f".{target.stem}.resume{target.suffix}")


@dataclass
class Journal:
    record: RunRecord
    chunk_size: int
    chunks: int
    done: set[int]

    def matches(self, record: RunRecord, chunk_size: int, chunks: int) -> bool:
        return self.record == record and self.chunk_size == chunk_size and self.chunks == chunks

    def save(self, final: Path) -> None:
        """Write atomically (temporary file + rename), so a kill leaves the old or the new journal, never half."""
        path = journal_path(final)
        data: dict[str, Any] = {"record": json.loads(self.record.to_json()), "chunk_size": self.chunk_size,
                                "chunks": self.chunks, "done": sorted(self.done)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    @classmethod
    def load(cls, final: Path) -> Journal | None:
        try:
            data = json.loads(journal_path(final).read_text())
            record = RunRecord.from_json(json.dumps(data["record"]))
            done = {int(i) for i in data["done"]}
            if record is None:
                return None
            return cls(record, int(data["chunk_size"]), int(data["chunks"]), done)
        except (OSError, ValueError, TypeError, KeyError):
            return None
