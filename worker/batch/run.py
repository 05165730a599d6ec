"""The client side of a batch: which rasters need work, chunk tasks on the cluster, outputs written as they come.

At most ``max_in_flight`` chunk tasks are submitted at a time (twice the cluster's task threads), so results
never pile up in worker memory and only the rasters being worked on have open partial files. Rasters are
taken in order; a raster whose chunk fails is left resumable and the others go on. A Dask worker that dies
loses only its running chunks: the scheduler gives them to another worker and their futures still complete.
"""
from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, as_completed

from ..client import PlannedChunk
from ..engine import chunk_plan
from ..io.raster_output import confidence_path
from ..io.raster_source import InputError
from .inputs import RasterMeta, probe
from .journal import RunRecord, read_record
from .output import RasterOutput
from .tasks import ChunkOptions, ChunkResult, SourceSpec, segment_chunk


@dataclass(frozen=True)
class BatchOptions:
    """What every chunk of the run shares (patch and stride already resolved to numbers)."""

    model_name: str
    model_sha256: str
    backend: str
    patch: int
    stride: int
    chunk_size: int
    batch_size: int
    tta: bool
    confidence: bool
    vector: bool
    bands: tuple[int, int, int] | None
    retries: int = 2


@dataclass
class RasterJob:
    """One input raster and what happens to it: todo → done, or skipped (already finished), or failed."""

    seq: int
    input: str
    final: Path
    status: str = "todo"
    message: str = ""
    meta: RasterMeta | None = None
    record: RunRecord | None = None
    chunks: list[PlannedChunk] = field(default_factory=list)
    output: RasterOutput | None = None
    workers: collections.Counter = field(default_factory=collections.Counter)
    computed: int = 0
    compute_s: float = 0.0  # time inside the chunk tasks (reading the window + inference), summed
    seconds: float = 0.0
    started: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"input": self.input, "output": str(self.final), "status": self.status, "message": self.message,
                "chunks": len(self.chunks), "computed": self.computed, "compute_s": round(self.compute_s, 3),
                "resumed": self.output.resumed if self.output else 0, "workers": dict(self.workers),
                "seconds": round(self.seconds, 3)}


def prepare_job(seq: int, item: str, final: Path, options: BatchOptions) -> RasterJob:
    """Read the input's header, plan its chunks and decide whether its output is already finished."""
    job = RasterJob(seq, item, final)
    try:
        job.meta = probe(item, options.bands)
    except InputError as exc:
        job.status, job.message = "failed", str(exc)
        return job
    grid = job.meta.grid
    job.record = RunRecord(options.model_sha256, options.model_name, options.backend, options.patch, options.stride,
                           job.meta.bands, options.tta, options.confidence, (grid.height, grid.width))
    job.chunks = chunk_plan(grid.height, grid.width, options.patch, options.stride, options.chunk_size)
    if final.exists():
        readable, record = read_record(final)
        if record is None:
            job.status = "failed"
            job.message = (f"{final} exists and was not written by worker.batch ({'no record' if readable else 'unreadable'}); "
                           "move it away or choose another --out-dir")
        elif record.satisfies(job.record) and (not options.confidence or confidence_path(final).exists()):
            vector_missing = options.vector and not final.with_suffix(".gpkg").exists()
            job.status = "vector" if vector_missing else "skipped"
        else:
            job.message = "made with other parameters or another model: recomputed"
    return job


class BatchRun:
    """Submits chunk tasks, writes their results into each raster's output, commits finished rasters."""

    def __init__(self, client: Client, plugin: str, jobs: Sequence[RasterJob], options: BatchOptions,
                 classes: Sequence[dict], on_progress: Callable[[int, RasterJob | None], None] | None = None) -> None:
        self.client, self.plugin, self.jobs, self.options = client, plugin, list(jobs), options
        self.classes = [dict(c) for c in classes]
        self.on_progress = on_progress or (lambda chunks, job: None)
        self.futures: dict[Future, tuple[RasterJob, PlannedChunk]] = {}
        self.workers: collections.Counter = collections.Counter()
        self._slots = (0.0, 4)
        self._chunk_options = ChunkOptions(options.patch, options.stride, options.batch_size, options.tta,
                                           options.confidence)

    def execute(self) -> None:
        """Run every job to done or failed; on interruption every open output is suspended (resumable)."""
        for job in self.jobs:
            if job.status == "vector":
                self._finish_vector(job)
        pending = self._pending_chunks()
        completed = as_completed()
        try:
            self._fill(pending, completed)
            for future in completed:
                entry = self.futures.pop(future, None)
                if entry is not None:
                    self._collect(future, *entry)
                self._fill(pending, completed)
        except BaseException:
            self.client.cancel(list(self.futures))
            for job in self.jobs:
                if job.output is not None and job.status == "todo":
                    job.output.suspend()
            raise

    def _max_in_flight(self) -> int:
        checked, slots = self._slots
        if time.monotonic() - checked > 2.0:  # the cluster may grow or shrink while we run
            slots = max(4, 2 * sum(self.client.nthreads().values()))
            self._slots = (time.monotonic(), slots)
        return slots

    def _pending_chunks(self) -> Iterator[tuple[RasterJob, PlannedChunk]]:
        """Chunks still to compute, raster by raster; a raster's output is opened when its turn comes."""
        for job in self.jobs:
            if job.status != "todo":
                continue
            if not self._open(job):
                continue
            for chunk in job.chunks:
                if job.status != "todo":
                    break
                if chunk.index not in job.output.done:
                    yield job, chunk

    def _open(self, job: RasterJob) -> bool:
        job.started = time.monotonic()
        job.output = RasterOutput(job.final, job.meta.grid, self.classes, job.record, self.options.chunk_size,
                                  job.chunks)
        try:
            job.output.open()
        except (OSError, RuntimeError, ValueError) as exc:
            self._fail(job, f"cannot write {job.final}: {exc}")
            return False
        if job.output.resumed:
            self.on_progress(job.output.resumed, None)
        if job.output.complete:
            self._commit(job)
            return False
        return True

    def _fill(self, pending: Iterator[tuple[RasterJob, PlannedChunk]], completed: as_completed) -> None:
        while len(self.futures) < self._max_in_flight():
            entry = next(pending, None)
            if entry is None:
                return
            job, chunk = entry
            spec = SourceSpec(job.input, job.meta.bands, (job.meta.grid.height, job.meta.grid.width))
            future = self.client.submit(segment_chunk, self.plugin, spec, chunk, self._chunk_options,
                                        key=f"factseg-chunk-{self._token(job)}-{chunk.index}",
                                        retries=self.options.retries, priority=len(self.jobs) - job.seq)
            self.futures[future] = (job, chunk)
            completed.add(future)

    def _token(self, job: RasterJob) -> str:
        """Task keys: the same raster, parameters and chunk always get the same key (a result may be reused)."""
        text = f"{job.input}|{job.record.to_json()}|{self.options.chunk_size}"
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def _collect(self, future: Future, job: RasterJob, chunk: PlannedChunk) -> None:
        if job.status != "todo" or future.status == "cancelled":
            return
        if future.status == "error":
            exc = future.exception()
            self._fail(job, f"chunk {chunk.index}: {type(exc).__name__}: {exc}")
            return
        result: ChunkResult = future.result()
        try:
            job.output.write(chunk, result.classes, result.confidence)
        except (OSError, RuntimeError, ValueError) as exc:
            self._fail(job, f"cannot write chunk {chunk.index} of {job.final}: {exc}")
            return
        job.computed += 1
        job.compute_s += result.seconds
        job.workers[result.worker] += 1
        self.workers[result.worker] += 1
        self.on_progress(1, None)
        if job.output.complete:
            self._commit(job)

    def _commit(self, job: RasterJob) -> None:
        try:
            job.output.commit()
        except (OSError, RuntimeError) as exc:
            self._fail(job, f"cannot commit {job.final}: {exc}")
            return
        job.seconds = time.monotonic() - job.started
        job.status = "done"
        if self.options.vector:
            self._finish_vector(job)
        self.on_progress(0, job)

    def _finish_vector(self, job: RasterJob) -> None:
        from ..io.vectorize import polygonize_classes

        try:
            polygonize_classes(job.final, job.final.with_suffix(".gpkg"), self.classes)
        except (OSError, RuntimeError, ValueError) as exc:
            self._fail(job, f"cannot write polygons {job.final.with_suffix('.gpkg')}: {exc}")
            return
        if job.status == "vector":
            job.status = "skipped"

    def _fail(self, job: RasterJob, message: str) -> None:
        """This raster stops (resumable: its partial files and journal stay); the other rasters go on."""
        job.status, job.message = "failed", message
        mine = [f for f, (j, _) in self.futures.items() if j is job]
        for future in mine:
            del self.futures[future]
        if mine:
            self.client.cancel(mine)
        if job.output is not None:
            try:
                job.output.suspend()
            except (OSError, RuntimeError):
                pass
        self.on_progress(0, job)
