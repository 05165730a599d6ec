"""One segmentation job, shared by the Segment Layer task and the Processing algorithm.

:func:`prepare_job` runs on the thread that owns the layer (the main thread, or Processing's
``prepareAlgorithm``): it checks the request, plans the output grid and clones the layer's provider.
:func:`run_job` runs anywhere (the task thread): it reaches or starts the worker and runs the one segmentation
pipeline (:mod:`worker.io.pipeline`, shared with ``python -m worker.segment``): stream the pixels, write the class
GeoTIFF block by block, optionally polygonise it and compute per-class statistics, publish every output together
only when complete. Errors come out as :class:`FactSegError` in plain words; cancellation as
:class:`JobCancelled`, after the worker was told to stop and the partial file was removed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsGeometry,
    QgsRasterLayer,
    QgsRectangle,
)

from .aoi import PolygonMask, union_of
from .errors import FactSegError, JobCancelled
from .grid import OutputGrid, plan_grid
from .local_workers import LocalWorkerSpec, local_endpoint, release
from .model_resolution import run_note
from .output_paths import check_outputs
from .raster_reading import RasterReader, parse_bands
from .worker_import import (
    BadClassTable,
    CancelledBeforeCommit,
    RemoteError,
    SegmentationCancelled,
    SegmentationRun,
    WorkerClient,
    WorkerError,
    WorkerUnavailable,
    contract,
    run_segmentation,
)

PROBE_TIMEOUT_S = 10.0  # a running worker answers 'open' at once, even while busy
CHUNK_TIMEOUT_S = 120.0  # silence (no reply, progress or heartbeat) before a chunk is resent

Progress = Callable[[float], None]
IsCancelled = Callable[[], bool]
Log = Callable[[str], None]


@dataclass
class WorkerTarget:
    """Where inference runs: an endpoint to connect to, or (endpoint empty) a local worker to start."""

    endpoint: str = ""
    local: LocalWorkerSpec | None = None
    probe_timeout_s: float = field(default_factory=lambda: PROBE_TIMEOUT_S)
    server_key: bytes | None = None  # z85 public key of a CURVE worker (remote workers)
    client_keys: tuple[bytes, bytes] | None = None  # z85 (public, secret) of this client

    def client(self, endpoint: str, timeout_s: float, retries: int = 3) -> WorkerClient:
        """A client for ``endpoint`` with this target's CURVE keys (none: plain loopback/ipc)."""
        return WorkerClient(endpoint, timeout_s=timeout_s, retries=retries, server_public_key=self.server_key,
                            client_keys=self.client_keys)

    def describe(self) -> str:
        if self.endpoint:
            return f"worker at {self.endpoint}"
        return f"local worker ({self.local.model if self.local else 'no model'})"


@dataclass
class JobRequest:
    """Everything :func:`run_job` needs; built by :func:`prepare_job` on the main thread."""

    reader: RasterReader
    target: WorkerTarget
    output_path: Path
    vector_path: Path | None = None
    statistics: bool = True
    patch: int | None = None
    stride: int | None = None
    layer_name: str = ""
    chunk_size: int | None = None  # pixels per chunk side; None: the worker's default
    tta: bool = False  # flip test-time augmentation (the worker averages the flipped predictions)
    confidence_path: Path | None = None  # optional float32 raster: probability of the chosen class

    @property
    def grid(self) -> OutputGrid:
        return self.reader.grid


@dataclass
class JobResult:
    """What a finished job produced."""

    raster_path: Path
    classes: list[dict]
    grid: OutputGrid
    info: dict = field(default_factory=dict)
    vector_path: Path | None = None
    confidence_path: Path | None = None
    feature_count: int = 0
    statistics: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def prepare_job(
    layer: QgsRasterLayer,
    output_path: str | Path,
    target: WorkerTarget,
    *,
    extent: QgsRectangle | None = None,
    extent_crs: QgsCoordinateReferenceSystem | None = None,
    resolution: float = 0.0,
    resolution_units: str = "map_units",
    bands: str | tuple[int, int, int] | None = None,
    scaling: str = "auto",
    patch: int | None = None,
    stride: int | None = None,
    vector_path: str | Path | None = None,
    statistics: bool = True,
    context: QgsCoordinateTransformContext | None = None,
    chunk_size: int | None = None,
    aoi: list[QgsGeometry] | None = None,
    aoi_crs: QgsCoordinateReferenceSystem | None = None,
    tta: bool = False,
    confidence_path: str | Path | None = None,
) -> JobRequest:
    """Validate a request and capture the layer's data for a job (call on the layer's thread).

    ``aoi``: polygons (in ``aoi_crs``) outside which pixels are left out; their bounding box is the extent
    unless ``extent`` is given too.
    """
    if layer is None or not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise FactSegError("Choose a valid raster layer to segment.")
    if not output_path:
        raise FactSegError("Choose where to write the output GeoTIFF.")
    if Path(output_path).suffix.lower() not in (".tif", ".tiff"):
        raise FactSegError(f"The class raster is written as a GeoTIFF: give a .tif file name, not {output_path}.")
    if vector_path and Path(vector_path).suffix.lower() != ".gpkg":
        raise FactSegError(f"The polygons are written as a GeoPackage: give a .gpkg file name, not {vector_path}.")
    if confidence_path and Path(confidence_path).suffix.lower() not in (".tif", ".tiff"):
        raise FactSegError(f"The confidence raster is written as a GeoTIFF: give a .tif file name, not "
                           f"{confidence_path}.")
    check_outputs([output_path, vector_path, confidence_path], input_files(layer))
    if not target.endpoint and target.local is None:
        raise FactSegError(f"Give a worker endpoint (e.g. {contract.DEFAULT_ENDPOINT}) or a model to start a local worker.")
    patch, stride = patch or None, stride or None  # 0 or None: the worker's model defaults
    if patch is not None and patch < 0:
        raise FactSegError(f"The patch size must be positive, got {patch}.")
    if stride is not None and (stride < 0 or (patch is not None and stride > patch)):
        raise FactSegError(f"The stride must be between 1 and the patch size, got {stride}.")
    context = context or QgsCoordinateTransformContext()
    area = None
    if aoi is not None:
        area = union_of(aoi, aoi_crs or layer.crs(), layer.crs(), context)
        if extent is None:
            extent, extent_crs = area.boundingBox(), layer.crs()
    grid = plan_grid(layer, extent, extent_crs, resolution, resolution_units, context)
    mask = PolygonMask(area, grid) if area is not None else None
    reader = RasterReader.from_layer(layer, grid, parse_bands(bands, layer.bandCount()), scaling, context, mask)
    return JobRequest(
        reader=reader, target=target, output_path=Path(output_path),
        vector_path=Path(vector_path) if vector_path else None, statistics=statistics,
        patch=patch, stride=stride, layer_name=layer.name(), chunk_size=chunk_size or None, tta=bool(tta),
        confidence_path=Path(confidence_path) if confidence_path else None)


def input_files(layer: QgsRasterLayer) -> list[str]:
    """Every file the layer reads: its source and, for a GDAL dataset such as a VRT, the files behind it."""
    source = layer.source().split("|")[0]
    files = [source]
    if layer.providerType() == "gdal":
        gdal.PushErrorHandler("CPLQuietErrorHandler")
        try:
            dataset = gdal.Open(source)
            files += list(dataset.GetFileList() or []) if dataset is not None else []
        finally:
            gdal.PopErrorHandler()
    return files


def run_job(
    request: JobRequest,
    progress: Progress | None = None,
    is_cancelled: IsCancelled | None = None,
    log: Log | None = None,
) -> JobResult:
    """Segment the request's grid with the worker and write the outputs (call from the task thread)."""
    progress = progress or (lambda fraction: None)
    is_cancelled = is_cancelled or (lambda: False)
    log = log or (lambda message: None)
    started = time.monotonic()
    if is_cancelled():
        raise JobCancelled("Segmentation cancelled before it started; nothing was written.")
    local = request.target.local if not request.target.endpoint else None
    try:
        return _run(request, progress, is_cancelled, log, started)
    finally:
        if local is not None:
            release(local)


def _run(request: JobRequest, progress: Progress, is_cancelled: IsCancelled, log: Log, started: float) -> JobResult:
    grid = request.grid
    endpoint = request.target.endpoint
    if not endpoint:
        log(f"Starting a local worker for {request.target.local.model} …")  # type: ignore[union-attr]
        endpoint = local_endpoint(request.target.local)  # type: ignore[arg-type]
    log(f"Segmenting {request.layer_name or 'the layer'}: {grid.width} × {grid.height} px at "
        f"{grid.res_x:.6g} × {grid.res_y:.6g} {grid.crs.authid() or 'map units'} per pixel, with {endpoint}")
    wkt = QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL
    run = SegmentationRun(
        width=grid.width, height=grid.height, geotransform=grid.geotransform,
        crs_wkt=grid.crs.toWkt(wkt) if grid.crs.isValid() else "", reader=request.reader,
        output=request.output_path, vector=request.vector_path, confidence=request.confidence_path,
        statistics=request.statistics, patch=request.patch, stride=request.stride, chunk_size=request.chunk_size,
        tta=request.tta, prepare=request.reader.prepare)
    try:
        with request.target.client(endpoint, CHUNK_TIMEOUT_S) as client:
            # the handshake fails fast (not after the long chunk timeout) when nothing listens there
            def note_resolution(info: dict) -> None:  # the model sees pixels far from its own ground resolution
                note = run_note(info, grid)
                if note:
                    log(note)

            done = run_segmentation(client, run, progress=progress, is_cancelled=is_cancelled, log=log,
                                    on_info=note_resolution,
                                    open_timeout_s=request.target.probe_timeout_s, open_retries=0)
    except CancelledBeforeCommit as exc:
        raise JobCancelled("Segmentation cancelled before its outputs were saved; no output was written.") from exc
    except SegmentationCancelled as exc:
        raise JobCancelled("Segmentation cancelled; the worker stopped and no output was written.") from exc
    except WorkerUnavailable as exc:
        raise FactSegError(_unavailable(request.target, endpoint, exc)) from exc
    except RemoteError as exc:
        raise FactSegError(f"The worker at {endpoint} refused the job: {exc.message} ({exc.code}).") from exc
    except BadClassTable as exc:
        raise FactSegError(f"{str(exc)[:1].upper()}{str(exc)[1:]}") from exc
    except WorkerError as exc:
        raise FactSegError(f"Talking to the worker at {endpoint} failed: {exc}") from exc
    return JobResult(request.output_path, done.classes, grid, done.info,
                     vector_path=request.vector_path, confidence_path=request.confidence_path,
                     feature_count=done.feature_count, statistics=done.statistics,
                     seconds=time.monotonic() - started)


def _unavailable(target: WorkerTarget, endpoint: str, exc: Exception) -> str:
    """One sentence for a worker that does not answer: with CURVE keys, most often a key that does not match."""
    from .worker_import import WorkerLost

    if isinstance(exc, WorkerLost):  # it answered, then went silent mid-job (exited, hangs, unreachable)
        return f"The FactSeg {str(exc)[4:]}; no output was written."
    if target.server_key is not None:
        return (f"The FactSeg worker at {endpoint} does not answer over CURVE ({exc}): check that SERVER_KEY is "
                "that worker's public key and that the worker allows this client's key (CLIENT_KEY).")
    return (f"The FactSeg worker at {endpoint} does not answer ({exc}). Start one with "
            f"'python -m worker --bind {endpoint} --model MODEL', or choose to start a local worker.")
