"""Class rasters as analysts expect them: a GeoTIFF of uint8 class ids on the request's grid and CRS.

255 is nodata; the band carries a colour table and category names (class names), the class table as JSON
in the band metadata (kept inside the TIFF itself, so it survives when the ``.aux.xml`` sidecar that GDAL
uses for category names is lost); tiled and DEFLATE-compressed. The file is written under a temporary name
beside the target and renamed only when complete, so a failed or cancelled job never leaves a file that
looks finished. GDAL only: this module is used by the worker's command line and inside QGIS.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from osgeo import gdal

gdal.UseExceptions()

NODATA = 255
CREATION_OPTIONS = ("TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")
CLASS_TABLE_KEY = "FACTSEG_CLASSES"


def partial_path(path: Path) -> Path:
    """Temporary name used while ``path`` is being written: same folder (so the final rename is atomic), hidden,
    and the same extension (drivers such as GeoPackage check it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


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
    """Writes a class GeoTIFF block by block; ``commit()`` publishes it, ``abort()`` removes every trace."""

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        geotransform: Sequence[float],
        crs_wkt: str,
        classes: Sequence[dict],
        confidence: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"output raster must have a positive size, got {width}×{height}")
        if not classes:
            raise ValueError("output raster needs the class table (id, name, color) of the model")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.classes = [dict(c) for c in classes]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._targets = [self.path] + ([confidence_path(self.path)] if confidence else [])
        self._datasets: list[gdal.Dataset | None] = []
        driver = gdal.GetDriverByName("GTiff")
        try:
            for index, target in enumerate(self._targets):
                dtype = gdal.GDT_Byte if index == 0 else gdal.GDT_Float32
                ds = driver.Create(str(partial_path(target)), self.width, self.height, 1, dtype, list(CREATION_OPTIONS))
                ds.SetGeoTransform(tuple(float(v) for v in geotransform))
                if crs_wkt:
                    ds.SetProjection(crs_wkt)
                if metadata:
                    ds.SetMetadata(dict(metadata))  # dataset-level items (e.g. worker.batch's record of the run)
                band = ds.GetRasterBand(1)
                if index == 0:
                    band.SetNoDataValue(NODATA)
                    band.SetRasterColorTable(color_table(self.classes))
                    band.SetCategoryNames(category_names(self.classes))
                    band.SetMetadataItem(CLASS_TABLE_KEY, json.dumps(self.classes))
                    band.SetDescription("class id")
                else:
                    band.SetNoDataValue(-1.0)
                    band.SetDescription("confidence (probability of the chosen class)")
                self._datasets.append(ds)
        except Exception:
            self.abort()
            raise

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
            conf = np.where(classes == NODATA, -1.0, np.asarray(confidence, dtype=np.float32)).astype(np.float32)
            self._dataset(1).GetRasterBand(1).WriteArray(conf, xoff=int(x0), yoff=int(y0))

    def flush(self) -> None:
        """Make every block written so far durable in the partial files (a resumable run records what is on disk).

        GDAL's FlushCache can leave the last bytes in its file buffer, lost if the process is killed; closing
        the dataset writes them through, so each partial file is closed and opened again for update.
        """
        for index, target in enumerate(self._targets):
            self._dataset(index).FlushCache()
            self._datasets[index] = None
            self._datasets[index] = gdal.Open(str(partial_path(target)), gdal.GA_Update)

    def _dataset(self, index: int) -> gdal.Dataset:
        ds = self._datasets[index] if index < len(self._datasets) else None
        if ds is None:
            raise RuntimeError(f"{self.path} is already committed or aborted")
        return ds

    def commit(self) -> Path:
        """Finish the files (statistics, flush) and move them to their final names; returns the class raster."""
        for index in range(len(self._datasets)):
            ds = self._dataset(index)
            ds.FlushCache()
        self._close()
        for target in self._targets:
            for suffix in ("", ".aux.xml"):
                src = Path(str(partial_path(target)) + suffix)
                if src.exists():
                    os.replace(src, Path(str(target) + suffix))
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (safe to call more than once)."""
        self._close()
        for target in self._targets:
            for suffix in ("", ".aux.xml"):
                Path(str(partial_path(target)) + suffix).unlink(missing_ok=True)

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


def read_class_table(path: str | os.PathLike) -> list[dict]:
    """The class table stored in a class raster written by :class:`ClassRasterWriter`."""
    ds = gdal.Open(str(path))
    text = ds.GetRasterBand(1).GetMetadataItem(CLASS_TABLE_KEY)
    if not text:
        raise ValueError(f"{path} carries no FactSeg class table")
    return json.loads(text)
