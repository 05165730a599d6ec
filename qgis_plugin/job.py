"""One segmentation job, shared by the Segment Layer task and the Processing algorithm.

:func:`prepare_job` runs on the thread that owns the layer (the main thread, or Processing's
``prepareAlgorithm``): it checks the request, plans the output grid and clones the layer's provider.
:func:`run_job` runs anywhere (the task thread): it reaches or starts the worker, streams the pixels, writes the
class GeoTIFF block by block (published under its final name only when complete), then optionally polygonises
it and computes per-class statistics. Errors come out as :class:`FactSegError` in plain words; cancellation as
:class:`JobCancelled`, after the worker was told to stop and the partial file was removed.
"""
from __future__ import annotations

import os
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
from .output_paths import check_outputs
from .raster_reading import RasterReader, parse_bands
from .worker_import import (
    ClassRasterWriter,
    OutputSet,
    RemoteError,
    SegmentationCancelled,
    WorkerClient,
    WorkerError,
    WorkerUnavailable,
    class_statistics,
    polygonize_classes,
)
from .worker_import import confidence_path as worker_confidence_path

SEGMENT_SHARE = 0.9  # of the progress bar, when polygons or statistics follow
PROBE_TIMEOUT_S = 10.0  # a running worker answers 'info' at once, even while busy
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
    beside = worker_confidence_path(Path(output_path))
    if confidence_path and Path(confidence_path).resolve() != beside.resolve() and beside.exists():
        raise FactSegError(f"The confidence raster is first written as {beside}, which exists: move that file, or "
                           "name the confidence output after the class raster.")
    if not target.endpoint and target.local is None:
        raise FactSegError("Give a worker endpoint (e.g. tcp://127.0.0.1:5555) or a model to start a local worker.")
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
    with OutputSet() as outputs:  # every output of the run appears under its final name together, or none
        try:
            with request.target.client(endpoint, request.target.probe_timeout_s, retries=0) as probe:
                probe.info()  # fails fast (not after the long chunk timeout) when nothing listens there
            with request.target.client(endpoint, CHUNK_TIMEOUT_S) as client:
                info = client.info()
                classes = _check_classes(info, endpoint)
                log(f"Model {info.get('model', '?')} ({info.get('backbone', '?')}, {len(classes)} classes) "
                    f"on {info.get('device', '?')}.")
                writer = _segment(request, client, classes, outputs, progress, is_cancelled)
        except SegmentationCancelled as exc:
            raise JobCancelled("Segmentation cancelled; the worker stopped and no output was written.") from exc
        except WorkerUnavailable as exc:
            raise FactSegError(_unavailable(request.target, endpoint, exc)) from exc
        except RemoteError as exc:
            raise FactSegError(f"The worker at {endpoint} refused the job: {exc.message} ({exc.code}).") from exc
        except WorkerError as exc:
            raise FactSegError(f"Talking to the worker at {endpoint} failed: {exc}") from exc
        result = JobResult(request.output_path, classes, grid, info, confidence_path=request.confidence_path)
        written, confidence = writer.written_path, writer.written_confidence_path
        if request.statistics:
            result.statistics = class_statistics(written, classes, confidence_path=confidence)
        if request.vector_path:
            log("Making polygons …")
            result.feature_count = polygonize_classes(written, request.vector_path, classes,
                                                      confidence_path=confidence, outputs=outputs)
            result.vector_path = request.vector_path
        if is_cancelled():
            raise JobCancelled("Segmentation cancelled before its outputs were saved; no output was written.")
        outputs.commit()
    if request.confidence_path is not None:
        _move(worker_confidence_path(request.output_path), request.confidence_path)
    progress(1.0)
    result.seconds = time.monotonic() - started
    return result


def _segment(request: JobRequest, client: WorkerClient, classes: list[dict], outputs: OutputSet,
             progress: Progress, is_cancelled: IsCancelled) -> ClassRasterWriter:
    """Stream the grid through the worker into the class (and confidence) raster, under partial names."""
    grid = request.grid
    request.reader.prepare()
    share = SEGMENT_SHARE if (request.vector_path or request.statistics) else 1.0
    wkt = QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL
    crs_wkt = grid.crs.toWkt(wkt) if grid.crs.isValid() else ""
    confidence = request.confidence_path is not None
    with ClassRasterWriter(request.output_path, grid.width, grid.height, grid.geotransform, crs_wkt, classes,
                           confidence=confidence, outputs=outputs) as writer:
        client.segment_raster(
            grid.height, grid.width, request.reader, writer.write,
            patch=request.patch, stride=request.stride, chunk_size=request.chunk_size,
            confidence=confidence, tta=request.tta,
            progress=lambda fraction: progress(share * float(fraction)),
            is_cancelled=is_cancelled)
        if is_cancelled():
            raise SegmentationCancelled("cancelled")
    return writer


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


def _move(written: Path, wanted: Path) -> None:
    """Give the confidence raster the name the user chose (the writer puts it beside the class raster)."""
    if written.resolve() != wanted.resolve():
        wanted.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, wanted)


def _check_classes(info: dict, endpoint: str) -> list[dict]:
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes:
        raise FactSegError(f"The worker at {endpoint} did not describe its classes: is it a FactSeg worker?")
    try:
        return [{"id": int(c["id"]), "name": str(c["name"]), "color": [int(v) for v in c["color"]][:3]}
                for c in classes]
    except (KeyError, TypeError, ValueError) as exc:
        raise FactSegError(f"The worker at {endpoint} sent a malformed class table: {exc}") from exc


def summary(result: JobResult) -> str:
    """The message-bar text of a finished job: size, time, objects and the classes present."""
    stats = format_statistics(result.statistics) if result.statistics else ""
    polygons = f", {result.feature_count} objects" if result.vector_path else ""
    return f"{result.grid.width} × {result.grid.height} px in {result.seconds:.1f} s{polygons}. {stats}".strip()


def format_statistics(statistics: list[dict], min_share: float = 0.0) -> str:
    """One line per class present: 'ship: 1.2 % (3 456 m²)'; background last; for the message bar and log."""
    rows = [s for s in statistics if s["pixels"] > 0 and s["share"] >= min_share]
    rows.sort(key=lambda s: (s["id"] == 0, -s["pixels"]))
    return "; ".join(f"{s['name'].replace('_', ' ')}: {100 * s['share']:.2f} % ({_area(s['area_m2'])})"
                     for s in rows) or "no valid pixels"


def _area(square_metres: float) -> str:
    if square_metres >= 1e6:
        return f"{square_metres / 1e6:.3f} km²"
    if square_metres >= 1e4:
        return f"{square_metres / 1e4:.2f} ha"
    return f"{square_metres:.1f} m²"
