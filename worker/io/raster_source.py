"""A GDAL raster read window by window as RGB pixels plus validity, in the coordinates of an extent of it."""
from __future__ import annotations

import math

import numpy as np


class InputError(ValueError):
    """The input raster or the options cannot be used; the message says why."""


class RasterSource:
    """RGB pixels and validity of a window of a GDAL raster, in the coordinates of an extent of it."""

    def __init__(self, path: str, extent: tuple[float, float, float, float] | None = None,
                 bands: tuple[int, int, int] | None = None) -> None:
        from osgeo import gdal

        gdal.UseExceptions()
        try:
            self.ds = gdal.Open(str(path))
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or ["unknown error"])[0]
            raise InputError(f"cannot open {path}: {reason}") from None
        ds = self.ds
        self.bands = bands or self._rgb_bands()
        for b in self.bands:
            if not 1 <= b <= ds.RasterCount:
                raise InputError(f"{path} has {ds.RasterCount} band(s); band {b} does not exist")
            band = ds.GetRasterBand(b)
            if band.DataType != gdal.GDT_Byte:
                raise InputError(
                    f"{path} band {b} is {gdal.GetDataTypeName(band.DataType)}; FactSeg expects 8-bit RGB. Convert "
                    f"first, e.g. gdal_translate -ot Byte -scale {path} rgb8.tif"
                )
        self.path = str(path)
        #: Every file of the dataset (a VRT's sources, a format's header and data files): outputs must avoid them.
        self.files = [str(f) for f in (ds.GetFileList() or [])] or [self.path]
        self.geotransform = ds.GetGeoTransform()
        self.crs_wkt = ds.GetProjection() or ""
        self.row0, self.col0, self.height, self.width = self._window(extent)
        gt = self.geotransform
        self.out_geotransform = (
            gt[0] + self.col0 * gt[1] + self.row0 * gt[2], gt[1], gt[2],
            gt[3] + self.col0 * gt[4] + self.row0 * gt[5], gt[4], gt[5],
        )
        self._masked = any(
            ds.GetRasterBand(b).GetMaskFlags() != gdal.GMF_ALL_VALID for b in self.bands
        )

    def _rgb_bands(self) -> tuple[int, int, int]:
        from osgeo import gdal

        ds = self.ds
        if ds.RasterCount == 1:
            return (1, 1, 1)  # grayscale: the network sees it as grey RGB
        if ds.RasterCount == 2:
            raise InputError("a 2-band raster is neither grey nor RGB; pass --bands R,G,B")
        interp = {ds.GetRasterBand(i).GetColorInterpretation(): i for i in range(1, ds.RasterCount + 1)}
        rgb = (interp.get(gdal.GCI_RedBand), interp.get(gdal.GCI_GreenBand), interp.get(gdal.GCI_BlueBand))
        return rgb if all(rgb) else (1, 2, 3)  # type: ignore[return-value]

    def _window(self, extent: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
        ds = self.ds
        if extent is None:
            return 0, 0, ds.RasterYSize, ds.RasterXSize
        gt = self.geotransform
        if gt[2] != 0 or gt[4] != 0:
            raise InputError("--extent needs a north-up raster (no rotation in its geotransform)")
        xmin, ymin, xmax, ymax = extent
        if not all(math.isfinite(v) for v in extent):
            raise InputError(f"--extent {extent} must be four finite numbers")
        if xmin >= xmax or ymin >= ymax:
            raise InputError(f"--extent {extent} is empty: expected xmin,ymin,xmax,ymax with min < max")
        if gt[1] == 0 or gt[5] == 0:
            raise InputError(f"--extent needs a georeferenced raster; its pixel size is {gt[1]} × {gt[5]}")
        eps = 1e-6
        # clamped to the raster before rounding: a huge extent over tiny pixels overflows to ±inf
        cols = sorted(_clamp(v, ds.RasterXSize) for v in ((xmin - gt[0]) / gt[1], (xmax - gt[0]) / gt[1]))
        rows = sorted(_clamp(v, ds.RasterYSize) for v in ((ymax - gt[3]) / gt[5], (ymin - gt[3]) / gt[5]))
        col0, col1 = max(0, math.floor(cols[0] + eps)), min(ds.RasterXSize, math.ceil(cols[1] - eps))
        row0, row1 = max(0, math.floor(rows[0] + eps)), min(ds.RasterYSize, math.ceil(rows[1] - eps))
        if col0 >= col1 or row0 >= row1:
            x0, x1 = gt[0], gt[0] + ds.RasterXSize * gt[1]
            y0, y1 = gt[3] + ds.RasterYSize * gt[5], gt[3]
            raise InputError(f"--extent {extent} does not overlap the raster (bounds {x0},{min(y0, y1)},{x1},{max(y0, y1)})")
        return row0, col0, row1 - row0, col1 - col0

    def read(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 h×w×3 pixels and a bool validity mask (None when the raster has no nodata/mask/alpha)."""
        xoff, yoff, w, h = self.col0 + x0, self.row0 + y0, x1 - x0, y1 - y0
        pixels = np.empty((h, w, 3), dtype=np.uint8)
        valid = np.ones((h, w), dtype=bool) if self._masked else None
        try:
            for i, b in enumerate(self.bands):
                band = self.ds.GetRasterBand(b)
                pixels[:, :, i] = band.ReadAsArray(xoff, yoff, w, h)
                if valid is not None:
                    valid &= band.GetMaskBand().ReadAsArray(xoff, yoff, w, h) != 0
        except RuntimeError as exc:  # a truncated or corrupt file often fails only where its data is missing
            reason = (str(exc).strip().splitlines() or ["read error"])[0].rstrip(".")
            raise InputError(f"cannot read {self.path} at rows {yoff}–{yoff + h}, columns {xoff}–{xoff + w} "
                             f"(is the file truncated or corrupt? GDAL: {reason})") from None
        return pixels, valid


def _clamp(value: float, size: int) -> float:
    return min(max(value, -1.0), size + 1.0)
