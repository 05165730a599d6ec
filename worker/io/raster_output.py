"""Class rasters as analysts expect them: a GeoTIFF of uint8 class ids on the request's grid and CRS.

255 is nodata; the band carries a colour table and category names (class names), the class table as JSON
in the band metadata (kept inside the TIFF itself, so it survives when the ``.aux.xml`` sidecar that GDAL
uses for category names is lost); tiled and DEFLATE-compressed, with internal overviews (MODE for classes, so
a zoomed-out map still shows class ids, never blends of them; AVERAGE for the confidence raster) so large
results draw fast at small scales. The files are written under partial names beside the targets (an
:class:`~worker.io.outputs.OutputSet`, the caller's or the writer's own) and published only when complete,
so a failed or cancelled job never leaves a file that looks finished. GDAL only: used by the CLI and in QGIS.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from osgeo import gdal

from ..contract import NODATA_CLASS as NODATA
from .outputs import OutputSet, partial_path

gdal.UseExceptions()

__all__ = ["NODATA", "ClassRasterWriter", "confidence_path", "partial_path", "read_class_table", "overview_factors"]

CREATION_OPTIONS = ("TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")
CLASS_TABLE_KEY = "FACTSEG_CLASSES"
CONFIDENCE_NODATA = -1.0
#: Overviews are added (factors 2, 4, 8, …) until the smallest fits in one block, as ``gdaladdo`` does.
OVERVIEW_MIN_SIZE = 256
CLASS_RESAMPLING = "MODE"
CONFIDENCE_RESAMPLING = "AVERAGE"


def overview_factors(width: int, height: int, min_size: int = OVERVIEW_MIN_SIZE) -> list[int]:
    """Decimation factors 2, 4, 8, … until the overview's larger side is at most ``min_size`` pixels."""
    factors, factor = [], 2
    while -(-max(width, height) // (factor // 2)) > min_size:
        factors.append(factor)
        factor *= 2
    return factors


def confidence_path(path: Path) -> Path:
    """Where the optional confidence raster (float32 top-class probability) of ``path`` goes."""
    return path.with_name(f"{path.stem}_confidence{path.suffix or '.tif'}")


def color_table(classes: Sequence[dict]) -> gdal.ColorTable:
    """GDAL colour table: each class id → its RGB colour (opaque), nodata → transparent."""
    table = gdal.ColorTable()
    for item in classes:
        r, g, b = (int(v) for v in item["color"])
        table.SetColorEntry(int(item["id"]), (r, g, b, 255))
    table.SetColorEntry(NODATA, (0, 0, 0, 0))
    return table


def category_names(classes: Sequence[dict]) -> list[str]:
    """Category names indexed by pixel value (empty for unused values, "nodata" at 255)."""
    names = [""] * (NODATA + 1)
    for item in classes:
        names[int(item["id"])] = str(item["name"])
    names[NODATA] = "nodata"
    return names


class ClassRasterWriter:
    """Writes a class GeoTIFF (and optionally its confidence raster) block by block.

    ``outputs``: the run's :class:`OutputSet`; the writer registers its files there and :meth:`commit` only
    finishes them (overviews, flush, close) under their partial names, :attr:`written_path`, for the caller to
    read (statistics, polygons) and publish with the rest of the run. Without ``outputs`` the writer keeps its
    own set and :meth:`commit` also publishes. :meth:`abort` removes every trace of the files.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        geotransform: Sequence[float],
        crs_wkt: str,
        classes: Sequence[dict],
        confidence: bool = False,
        *,
        outputs: OutputSet | None = None,
        overviews: bool = True,
        metadata: dict[str, str] | None = None,
        confidence_to: str | os.PathLike | None = None,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"output raster must have a positive size, got {width}×{height}")
        if not classes:
            raise ValueError("output raster needs the class table (id, name, color) of the model")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.classes = [dict(c) for c in classes]
        self.overviews = overviews
        self.metadata = dict(metadata or {})  # dataset-level items (e.g. worker.batch's record of the run)
        self._own_outputs = outputs is None
        if outputs is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            outputs = OutputSet()
        self.outputs = outputs
        beside = Path(confidence_to) if confidence_to else confidence_path(self.path)  # the name chosen, or beside
        self._targets = [self.path] + ([beside] if confidence else [])
        self._partials = [outputs.add(target) for target in self._targets]
        self._datasets: list[gdal.Dataset | None] = []
        self._finished = False
        try:
            for index, partial in enumerate(self._partials):
                self._datasets.append(self._create(partial, geotransform, crs_wkt, is_confidence=index > 0))
        except Exception:
            self.abort()
            raise

    def _create(self, partial: Path, geotransform: Sequence[float], crs_wkt: str, is_confidence: bool) -> gdal.Dataset:
        dtype = gdal.GDT_Float32 if is_confidence else gdal.GDT_Byte
        driver = gdal.GetDriverByName("GTiff")
        ds = driver.Create(str(partial), self.width, self.height, 1, dtype, list(CREATION_OPTIONS))
        ds.SetGeoTransform(tuple(float(v) for v in geotransform))
        if crs_wkt:
            ds.SetProjection(crs_wkt)
        if self.metadata:
            ds.SetMetadata(self.metadata)
        band = ds.GetRasterBand(1)
        if is_confidence:
            band.SetNoDataValue(CONFIDENCE_NODATA)
            band.SetDescription("confidence (probability of the chosen class)")
        else:
            band.SetNoDataValue(NODATA)
            band.SetRasterColorTable(color_table(self.classes))
            band.SetCategoryNames(category_names(self.classes))
            band.SetMetadataItem(CLASS_TABLE_KEY, json.dumps(self.classes))
            band.SetDescription("class id")
        return ds

    @property
    def written_path(self) -> Path:
        """Where the class raster is readable now: its partial name until the output set is committed."""
        return self.path if self.outputs.committed else self._partials[0]

    @property
    def written_confidence_path(self) -> Path | None:
        """Where the confidence raster is readable now (None when not written)."""
        if len(self._targets) < 2:
            return None
        return self._targets[1] if self.outputs.committed else self._partials[1]

    def write(self, y0: int, x0: int, classes: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """Write a block of class ids (uint8, 255 = nodata) with its top-left pixel at (y0, x0)."""
        classes = np.asarray(classes)
        if classes.ndim != 2 or classes.dtype != np.uint8:
            raise ValueError(f"class block must be a 2-D uint8 array, got {classes.dtype} {classes.shape}")
        h, w = classes.shape
        if y0 < 0 or x0 < 0 or y0 + h > self.height or x0 + w > self.width:
            raise ValueError(f"block {h}×{w} at ({y0}, {x0}) falls outside the {self.height}×{self.width} raster")
        self._dataset(0).GetRasterBand(1).WriteArray(classes, xoff=int(x0), yoff=int(y0))
        if len(self._datasets) > 1:
            if confidence is None:
                raise ValueError("this writer was opened with confidence=True: pass the confidence block")
            conf = np.where(classes == NODATA, CONFIDENCE_NODATA, np.asarray(confidence, dtype=np.float32))
            self._dataset(1).GetRasterBand(1).WriteArray(conf.astype(np.float32), xoff=int(x0), yoff=int(y0))

    def flush(self) -> None:
        """Make every block written so far durable in the partial files (a resumable run records what is on disk).

        GDAL's FlushCache can leave the last bytes in its file buffer, lost if the process is killed; closing
        the dataset writes them through, so each partial file is closed and opened again for update.
        """
        for index, partial in enumerate(self._partials):
            self._dataset(index).FlushCache()
            self._datasets[index] = None
            self._datasets[index] = gdal.Open(str(partial), gdal.GA_Update)

    def _dataset(self, index: int) -> gdal.Dataset:
        ds = self._datasets[index] if index < len(self._datasets) else None
        if ds is None:
            raise RuntimeError(f"{self.path} is already committed or aborted")
        return ds

    def finish(self) -> Path:
        """Build the overviews and close the files, still under their partial names; returns the class raster's.
        Calling it again is harmless."""
        if self._finished:
            return self._partials[0]
        try:
            for index in range(len(self._datasets)):
                ds = self._dataset(index)
                factors = overview_factors(self.width, self.height) if self.overviews else []
                if factors:
                    _build_overviews(ds, CONFIDENCE_RESAMPLING if index else CLASS_RESAMPLING, factors)
                ds.FlushCache()
            self._close()
        except Exception:
            self.abort()
            raise
        self._finished = True
        return self._partials[0]

    def commit(self) -> Path:
        """Finish the files; publish them too when the writer owns its output set. Returns the class raster."""
        self.finish()
        if self._own_outputs:
            self.outputs.commit()
        return self.written_path

    def abort(self) -> None:
        """Discard everything this writer wrote (safe to call more than once)."""
        self._close()
        for target in self._targets:
            self.outputs.discard(target)

    def _close(self) -> None:
        self._datasets = [None for _ in self._datasets]

    def __enter__(self) -> ClassRasterWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _build_overviews(ds: gdal.Dataset, resampling: str, factors: list[int]) -> None:
    """Internal overviews (same compression and tiling as the full resolution), each level from the previous.

    GDAL warns that the intermediate levels carry no palette; MODE works on the class ids, not on colours,
    so the warning does not apply and is silenced (failures still raise).
    """
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds.BuildOverviews(resampling, factors)
    finally:
        gdal.PopErrorHandler()


def read_class_table(path: str | os.PathLike) -> list[dict]:
    """The class table stored in a class raster written by :class:`ClassRasterWriter`."""
    ds = gdal.Open(str(path))
    text = ds.GetRasterBand(1).GetMetadataItem(CLASS_TABLE_KEY)
    if not text:
        raise ValueError(f"{path} carries no FactSeg class table")
    return json.loads(text)
