"""One segmentation run, from the reader to committed outputs: the plugin's job and ``python -m worker.segment``.

Both faces hand :func:`run_segmentation` a connected :class:`~worker.client.WorkerClient` and a
:class:`SegmentationRun` (the output grid, a reader, options and output paths). They differ only in how they
read pixels (QGIS providers or GDAL), report progress, cancel, and word errors; the sequence is this module's:
claim every output name (stale partials cleared), ``open`` the job (the only handshake: the worker's info, class
table and chunk plan, one round trip per worker), stream the chunks into the class (and confidence) raster,
then statistics, polygons and the statistics JSON, then commit. Every output appears under its final name
together, or none does; a cancelled or failed run leaves no file. No torch: runs inside QGIS and in the CLI.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client.client import OpenedJob, WorkerClient
from ..client.protocol import RemoteError, SegmentationCancelled, WorkerError
from ..client.run import Reader
from .outputs import OutputSet
from .raster_output import ClassRasterWriter
from .vectorize import class_statistics, polygonize_classes

#: Share of the progress bar for the chunks when statistics or polygons follow them.
SEGMENT_SHARE = 0.9
#: Codes of an ``open`` refusal that mean the request's options (not the worker) are at fault.
OPTION_CODES = ("bad_header", "too_large")

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]
Log = Callable[[str], None]


class OptionsRefused(RemoteError):
    """The worker refused the job's options (patch, stride, chunk size, raster size) at ``open``: nothing ran."""


class BadClassTable(WorkerError):
    """The worker's ``open`` reply has no usable class table (not a FactSeg worker, or a broken one)."""


class CancelledBeforeCommit(SegmentationCancelled):
    """Cancelled after the chunks were computed, before the outputs were published: nothing was kept."""


@dataclass
class SegmentationRun:
    """What to segment and what to write. Paths left None are not written; patch/stride/chunk_size left None
    take the worker's model defaults. ``prepare`` is called once the worker accepted the job, before the first
    read (the plugin fixes its band scaling there)."""

    width: int
    height: int
    geotransform: Sequence[float]
    crs_wkt: str
    reader: Reader
    output: Path
    vector: Path | None = None
    confidence: Path | None = None
    statistics: bool = True
    stats_json: Path | None = None
    patch: int | None = None
    stride: int | None = None
    chunk_size: int | None = None
    tta: bool = False
    prepare: Callable[[], None] | None = None

    def output_paths(self) -> list[Path]:
        """Every file the run writes (class raster, confidence, polygons, statistics JSON)."""
        return [Path(p) for p in (self.output, self.confidence, self.vector, self.stats_json) if p]


@dataclass
class SegmentationResult:
    """What a committed run produced: the worker's info and class table, per-class statistics (empty when not
    asked for), the polygon count, and ``summary``: the run's statistics as the JSON file holds them."""

    info: dict[str, Any]
    classes: list[dict]
    statistics: list[dict] = field(default_factory=list)
    feature_count: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def run_segmentation(
    client: WorkerClient,
    run: SegmentationRun,
    *,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
    before_commit: Callable[[], None] | None = None,
    on_info: Callable[[dict], None] | None = None,
    open_timeout_s: float | None = None,
    open_retries: int | None = None,
) -> SegmentationResult:
    """Segment ``run`` through ``client`` and commit its outputs; progress goes from 0 to 1 over the whole run.

    ``open_timeout_s``/``open_retries`` bound the handshake (fail fast when nothing listens). Raises
    OptionsRefused, BadClassTable, SegmentationCancelled (CancelledBeforeCommit after the chunks), the client's
    WorkerError, OSError or GDAL's RuntimeError; whatever is raised, no output is left under a final or partial
    name. ``before_commit`` runs just before the outputs are published (the CLI holds its signals there);
    ``on_info`` gets the worker's ``open`` reply before any chunk (the plugin compares resolutions there).
    """
    progress = progress or (lambda fraction: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda message: None)
    with OutputSet() as outputs:  # every output of the run appears under its final name together, or none
        for path in run.output_paths():
            outputs.add(path)  # up front: clears partials of killed runs, claims the names
        opened = open_job(client, run, open_timeout_s, open_retries)
        classes = worker_classes(opened.info, client.endpoints)
        info = opened.info
        log(f"Model {info.get('model', '?')} ({info.get('backbone', '?')}, {len(classes)} classes) "
            f"on {info.get('device', '?')}.")
        if on_info is not None:
            on_info(info)
        if run.prepare is not None:
            run.prepare()
        writer, stats = _stream(client, run, opened, classes, outputs, progress, is_cancelled)
        result = _post_process(run, writer, classes, outputs, log)
        result.info, result.summary = info, {**stats, **result.summary}
        if run.stats_json:
            outputs.partial(run.stats_json).write_text(json.dumps(result.summary, indent=2))
        if is_cancelled():
            raise CancelledBeforeCommit("cancelled before the outputs were saved")
        if before_commit is not None:
            before_commit()  # from here on the run is complete
        outputs.commit()
    progress(1.0)
    return result


def open_job(client: WorkerClient, run: SegmentationRun, timeout_s: float | None = None,
             retries: int | None = None) -> OpenedJob:
    """The handshake; a refusal of the options is :class:`OptionsRefused` (the caller's usage error)."""
    try:
        return client.open_job(run.height, run.width, run.patch or None, run.stride or None, run.chunk_size or None,
                               timeout_s=timeout_s, retries=retries)
    except RemoteError as exc:
        if exc.code not in OPTION_CODES:
            raise
        raise OptionsRefused(exc.code, exc.message) from None


def worker_classes(info: dict[str, Any], endpoints: Sequence[str]) -> list[dict]:
    """The class table of an ``open`` reply as ``[{id, name, color}]``, or BadClassTable in one sentence."""
    where = ", ".join(endpoints)
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BadClassTable(f"the worker at {where} did not describe its classes: is it a FactSeg worker?")
    try:
        return [{"id": int(c["id"]), "name": str(c["name"]), "color": [int(v) for v in c["color"]][:3]}
                for c in classes]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadClassTable(f"the worker at {where} sent a malformed class table: {exc}") from exc


def _stream(client: WorkerClient, run: SegmentationRun, opened: OpenedJob, classes: list[dict], outputs: OutputSet,
            progress: Progress, is_cancelled: IsCancelled) -> tuple[ClassRasterWriter, dict]:
    """Stream the grid through the worker into the class (and confidence) raster, still under partial names."""
    share = SEGMENT_SHARE if (run.vector or run.statistics or run.stats_json) else 1.0
    confidence = run.confidence is not None
    with ClassRasterWriter(run.output, run.width, run.height, run.geotransform, run.crs_wkt, classes,
                           confidence=confidence, outputs=outputs, confidence_to=run.confidence) as writer:
        stats = client.segment_raster(
            run.height, run.width, run.reader, writer.write, confidence=confidence, tta=run.tta, opened=opened,
            progress=lambda fraction: progress(share * float(fraction)), is_cancelled=is_cancelled)
        if is_cancelled():
            raise SegmentationCancelled("cancelled")
    return writer, stats


def _post_process(run: SegmentationRun, writer: ClassRasterWriter, classes: list[dict], outputs: OutputSet,
                  log: Log) -> SegmentationResult:
    """Statistics and polygons of the finished (still partial) rasters, and the summary the JSON file holds."""
    result = SegmentationResult({}, classes)
    raster, confidence = writer.written_path, writer.written_confidence_path
    result.summary = {"output": str(run.output), "size": [run.height, run.width]}
    if run.statistics or run.stats_json:
        result.statistics = class_statistics(raster, classes, confidence_path=confidence)
        result.summary["classes"] = [s for s in result.statistics if s["pixels"]]
    if run.vector:
        log("Making polygons …")
        result.feature_count = polygonize_classes(raster, run.vector, classes, confidence_path=confidence,
                                                  outputs=outputs)
        result.summary.update(vector=str(run.vector), polygons=result.feature_count)
    return result
