"""Helpers for the QGIS plugin and Processing tests: real GeoTIFFs made with GDAL, a real worker process, and the
worker's own answer for given pixels (to compare the plugin's output with)."""
from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
from osgeo import gdal, osr
from project_paths import REPO_ROOT, VENV_PYTHON

PATCH, STRIDE = 128, 64
#: Geotransforms of the test rasters: 0.5 m UTM pixels, and ~0.5 m pixels in EPSG:4326.
UTM_GT = (500000.0, 0.5, 0.0, 4000000.0, 0.0, -0.5)
GEO_GT = (15.0, 5e-6, 0.0, 45.0, 0.0, -5e-6)


def scene(height: int, width: int, bands: int = 3, seed: int = 0, scale: float = 255.0) -> np.ndarray:
    """bands×h×w image with structure (smooth gradients, bright rectangles), so the model gives several classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((bands, height, width))
    for b in range(bands):
        base = 0.5 + 0.25 * np.sin(xx / (9 + 3 * b)) * np.cos(yy / (13 + 2 * b))
        base += 0.1 * rng.standard_normal((height, width))
        for _ in range(12):
            y0, x0 = rng.integers(0, height - 12), rng.integers(0, width - 12)
            base[y0:y0 + rng.integers(4, 12), x0:x0 + rng.integers(4, 12)] = rng.uniform(0.7, 1.0)
        out[b] = np.clip(base, 0, 1) * scale
    return out


def write_geotiff(
    path: Path, data: np.ndarray, geotransform: tuple, epsg: int, dtype: int = gdal.GDT_Byte,
    nodata: float | None = None,
) -> Path:
    """A real GeoTIFF (bands×h×w ``data``) in EPSG:``epsg``."""
    bands, height, width = data.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, dtype)
    ds.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(data[b])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds.FlushCache()
    ds = None
    return path


def read_classes(path: Path) -> tuple[np.ndarray, gdal.Dataset]:
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray(), ds


def start_worker(checkpoint: Path):
    """A real worker process (``python -m worker``) on a private ipc endpoint."""
    from worker.client import start_local_worker

    return start_local_worker(str(VENV_PYTHON), str(checkpoint), device="cpu", pythonpath=str(REPO_ROOT))


def reference_classes(endpoint: str, rgb: np.ndarray, valid: np.ndarray | None = None, patch: int = PATCH,
                      stride: int = STRIDE) -> np.ndarray:
    """What the worker answers for these exact pixels (h×w×3 uint8), through the client alone."""
    from worker.client import WorkerClient

    height, width = rgb.shape[:2]
    out = np.full((height, width), 254, dtype=np.uint8)

    def reader(y0, x0, y1, x1):
        return rgb[y0:y1, x0:x1], None if valid is None else valid[y0:y1, x0:x1]

    def writer(y0, x0, classes, confidence):
        out[y0:y0 + classes.shape[0], x0:x0 + classes.shape[1]] = classes

    with WorkerClient(endpoint, timeout_s=60) as client:
        client.segment_raster(height, width, reader, writer, patch=patch, stride=stride)
    assert (out != 254).all()
    return out


def build_plugin_zip(tmp: Path) -> Path:
    """Run the real build script (make plugin) into ``tmp``; returns the zip."""
    env = dict(os.environ, FACTSEG_BUILD_DIR=str(tmp / "build"), FACTSEG_DIST_DIR=str(tmp / "dist"))
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build_plugin.sh")], check=True, env=env, cwd=REPO_ROOT,
                   capture_output=True, text=True)
    return tmp / "dist" / "factseg.zip"


def unpack_plugin(zip_path: Path, plugins_dir: Path) -> Path:
    plugins_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins_dir)
    return plugins_dir / "factseg"


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_curve_worker(checkpoint: Path, keys_dir: Path):
    """A real worker on tcp loopback that requires CURVE: its keys and one allowed client (``python -m
    worker.keys``). Returns (worker, key paths)."""
    from worker.client import start_local_worker
    from worker.client.keys import load_client_keys, load_public_key
    from worker.keys import generate

    paths = generate(keys_dir)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    running = start_local_worker(
        str(VENV_PYTHON), str(checkpoint), endpoint=endpoint, device="cpu", pythonpath=str(REPO_ROOT),
        extra_args=["--curve-secret-key", str(paths["server_secret"]), "--curve-allowed-clients",
                    str(keys_dir / "clients")],
        server_public_key=load_public_key(paths["server_public"]),
        client_keys=load_client_keys(paths["client_secret"]))
    return running, paths


def imagery(height: int = 256, width: int = 320) -> np.ndarray:
    """3×h×w uint8 imagery: a crop of the real iSAID sample (a parking lot) when present, else a synthetic scene."""
    from project_paths import ISAID_SAMPLE

    sample = ISAID_SAMPLE / "train" / "images" / "P0005.png"
    if sample.is_file():
        from PIL import Image

        rgb = np.asarray(Image.open(sample).convert("RGB"))[300:300 + height, 180:180 + width]
        if rgb.shape[:2] == (height, width):
            return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return scene(height, width, seed=11).astype(np.uint8)


SHARPEN = 30.0


def mixed_checkpoint(model, image_chw: np.ndarray, path: Path, background_share: float = 0.7) -> Path:
    """A checkpoint of ``model`` (untrained) whose output on ``image_chw`` is about ``background_share``
    background and object classes elsewhere: the binary (foreground) head is centred at that quantile of its
    logits and sharpened.
    Trains nothing; it gives the map tests both background and objects to look at."""
    import copy

    import torch

    from factseg_core import save_checkpoint
    from factseg_core.config import MEAN, STD

    crafted = copy.deepcopy(model).eval()
    x = torch.from_numpy(image_chw.astype(np.float32))
    x = ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]
    with torch.no_grad():
        _, binary = crafted.logits(x)
        # centre the binary logits at the quantile and sharpen them: sigmoid(fg) is then ~0 (background wins the
        # CP fusion) or ~1 (an object class wins), nothing in between
        crafted.bi_head.bias -= torch.quantile(binary.flatten(), background_share)
        crafted.bi_head.weight *= SHARPEN
        crafted.bi_head.bias *= SHARPEN
    save_checkpoint(crafted, path)
    return path


def recording_feedback():
    """A QgsProcessingFeedback class that keeps what the algorithm reports: every log line (info, warnings and
    errors) in ``lines``, the errors alone in ``errors`` (processing.run raises only a generic message), and the
    progress."""
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []
            self.errors: list[str] = []
            self.progress: list[float] = []
            self.progressChanged.connect(self.progress.append)

        def pushInfo(self, info):  # noqa: N802
            self.lines.append(str(info))
            super().pushInfo(info)

        def pushWarning(self, warning):  # noqa: N802
            self.lines.append(str(warning))
            super().pushWarning(warning)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803
            self.lines.append(str(error))
            self.errors.append(error)
            super().reportError(error, fatalError)

        def text(self) -> str:
            return "\n".join(self.lines)

    return Recording


def wait_for_run(run, timeout_s: float = 120.0) -> None:
    """Process Qt events until a :class:`qgis_plugin.task.SegmentRun` has finished (its ``on_finished`` ran)."""
    import time

    from qgis.PyQt.QtCore import QCoreApplication

    done = []
    previous = run.on_finished
    run.on_finished = lambda r: (done.append(r), previous and previous(r))
    deadline = time.monotonic() + timeout_s
    while not done and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert done, f"run did not finish within {timeout_s} s (status {run.status()})"


def box_ring(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """The (column, row) corners of a pixel box given as (row0, col0, row1, col1)."""
    r0, c0, r1, c1 = box
    return [(c0, r1), (c1, r1), (c1, r0), (c0, r0)]


def write_label_polygons(path: Path, shapes, gt=UTM_GT, epsg: int | None = 32633, field_type=None) -> Path:
    """A GeoPackage layer "labels" with a class field "cls": one polygon per (ring, value) of ``shapes``, the ring
    in pixel (column, row) coordinates on ``gt``. A value None leaves the field unset; ``epsg`` None: no CRS."""
    from osgeo import ogr

    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = None
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTString if field_type is None else field_type))
    for points, value in shapes:
        ring = ", ".join(f"{gt[0] + c * gt[1]} {gt[3] + r * gt[5]}" for c, r in [*points, points[0]])
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON (({ring}))"))
        if value is not None:
            feature.SetField("cls", value)
        layer.CreateFeature(feature)
    ds = None
    return path


def registered_provider():
    """Register the FactSeg Processing provider (a generator for fixtures: the caller holds the reference the
    registry does not keep)."""
    from qgis.core import QgsApplication

    from qgis_plugin.processing_provider import FactSegProvider

    registry = QgsApplication.processingRegistry()
    prov = FactSegProvider()
    registry.addProvider(prov)
    yield prov
    registry.removeProvider(prov)
