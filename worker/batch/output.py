"""One output raster of a batch run, written incrementally under hidden partial names and resumable.

Chunks arrive in any order from any Dask worker and go straight into a :class:`ClassRasterWriter` (the same
grid, colour table and class names as ``python -m worker.segment``). About once a second the partial files
are flushed and the journal records which chunks they hold; a run killed at any point restarts from that
journal. The final names appear only at commit, when every chunk is in.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from ..client import PlannedChunk
from ..io.raster_output import ClassRasterWriter, confidence_path, partial_path
from .journal import RECORD_KEY, Journal, RunRecord, journal_path, resume_path

#: Seconds between two flushes + journal writes (what a killed run can lose, at most).
CHECKPOINT_S = 1.0


@dataclass(frozen=True)
class RasterGrid:
    """Where the output lies: size, geotransform and CRS of the input (at its native resolution)."""

    height: int
    width: int
    geotransform: tuple[float, ...]
    crs_wkt: str


def _aux(path: Path) -> Path:
    return Path(f"{path}.aux.xml")


class RasterOutput:
    """The output of one input raster: which chunks are written, the writer, the journal."""

    def __init__(self, final: Path, grid: RasterGrid, classes: Sequence[dict], record: RunRecord,
                 chunk_size: int, chunks: Sequence[PlannedChunk], checkpoint_s: float = CHECKPOINT_S) -> None:
        self.final, self.grid, self.classes, self.record = final, grid, [dict(c) for c in classes], record
        self.chunk_size, self.chunks = chunk_size, list(chunks)
        self.checkpoint_s = checkpoint_s
        self.done: set[int] = set()
        self.resumed = 0
        self._writer: ClassRasterWriter | None = None
        self._last_checkpoint = time.monotonic()

    @property
    def targets(self) -> list[Path]:
        return [self.final] + ([confidence_path(self.final)] if self.record.confidence else [])

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.chunks)

    def open(self) -> None:
        """Start the partial files: from a matching journal (copying its chunks), else from scratch."""
        journal = Journal.load(self.final)
        if journal is not None and journal.matches(self.record, self.chunk_size, len(self.chunks)):
            if self._resume(journal.done):
                return
        self.discard_leftovers()
        self._writer = self._new_writer()

    def _new_writer(self) -> ClassRasterWriter:
        g = self.grid
        return ClassRasterWriter(self.final, g.width, g.height, g.geotransform, g.crs_wkt, self.classes,
                                 confidence=self.record.confidence, metadata={RECORD_KEY: self.record.to_json()})

    def _resume(self, done: set[int]) -> bool:
        """Move the old partial files aside, copy the journal's chunks into fresh ones; False if they are unusable.

        The journal describes the moved-aside copy while it exists (a kill during the copy resumes from it
        again) and the fresh partial once that is flushed and the copy removed.
        """
        for target in self.targets:
            held, part = resume_path(target), partial_path(target)
            if not held.exists():
                if not part.exists():
                    return False
                os.replace(part, held)
            _aux(part).unlink(missing_ok=True)
        by_index = {c.index: c for c in self.chunks}
        if not done <= by_index.keys():
            return False
        writer = self._new_writer()
        try:
            sources = [gdal.Open(str(resume_path(t))) for t in self.targets]
            for index in sorted(done):
                y0, x0, y1, x1 = by_index[index].out
                blocks = [ds.GetRasterBand(1).ReadAsArray(x0, y0, x1 - x0, y1 - y0) for ds in sources]
                writer.write(y0, x0, blocks[0].astype(np.uint8, copy=False), *blocks[1:])
            writer.flush()
        except (RuntimeError, AttributeError, ValueError):
            writer.abort()
            return False
        sources = []
        self._writer, self.done, self.resumed = writer, set(done), len(done)
        Journal(self.record, self.chunk_size, len(self.chunks), self.done).save(self.final)
        for target in self.targets:
            for path in (resume_path(target), _aux(resume_path(target))):
                path.unlink(missing_ok=True)
        return True

    def write(self, chunk: PlannedChunk, classes: np.ndarray, confidence: np.ndarray | None) -> None:
        """Write one finished chunk; every ``checkpoint_s`` the partial files are flushed and journalled."""
        if self._writer is None:
            raise RuntimeError(f"{self.final}: output is not open")
        self._writer.write(chunk.out[0], chunk.out[1], classes, confidence)
        self.done.add(chunk.index)
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the partial files, then record the chunks they hold (in that order: the journal never lies)."""
        if self._writer is None:
            return
        self._writer.flush()
        Journal(self.record, self.chunk_size, len(self.chunks), self.done).save(self.final)
        self._last_checkpoint = time.monotonic()

    def commit(self) -> Path:
        """Publish the complete output under its final names; the journal goes."""
        if self._writer is None or not self.complete:
            raise RuntimeError(f"{self.final}: {len(self.done)} of {len(self.chunks)} chunks written, cannot commit")
        self._writer.commit()
        self._writer = None
        journal_path(self.final).unlink(missing_ok=True)
        return self.final

    def suspend(self) -> None:
        """Stop here, keeping the partial files and a journal of what they hold (the next run resumes)."""
        self.checkpoint()
        self._writer = None  # closing the datasets finishes the partial files; nothing is removed

    def discard_leftovers(self) -> None:
        """Remove partial, moved-aside and journal files of an earlier run that cannot be resumed."""
        for target in self.targets + [confidence_path(self.final)]:
            for path in (partial_path(target), resume_path(target)):
                path.unlink(missing_ok=True)
                _aux(path).unlink(missing_ok=True)
        journal_path(self.final).unlink(missing_ok=True)
