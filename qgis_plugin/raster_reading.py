"""Read pixels of any QGIS raster layer (GDAL file, VRT, WMS/XYZ…) as RGB uint8 plus a validity mask.

Everything goes through the QGIS raster API on a *clone* of the layer's data provider, so the user's layer (its
renderer, resampling, contrast settings) is never touched, and the clone may be used from a task thread. The
clone is made on the main thread (:meth:`RasterReader.from_layer`), pixels are read in the task thread.

Band mapping: three 1-based band numbers give R, G, B (default: the layer's multiband renderer bands, else 1,2,3,
or band 1 as grey). WMS/XYZ providers deliver ARGB colours: those are unpacked and alpha 0 marks invalid pixels.

Scaling to 0..255 (per band, fixed for the whole job so that chunks agree, computed once over the job's extent):
- ``auto``: 8-bit bands as they are; other types with QGIS's default stretch, the 2 %–98 % cumulative cut of the
  band's histogram (sampled, ``SAMPLE_SIZE`` pixels) — what the analyst sees in QGIS by default;
- ``minmax``: the band's minimum and maximum over the extent (sampled);
- ``none``: values clipped to 0..255.
A pixel is invalid where any mapped band is nodata (the provider's or user nodata value, outside the source, NaN)
— the rule QGIS's multiband renderer applies when it draws a pixel transparent.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateTransformContext,
    QgsMultiBandColorRenderer,
    QgsRasterBandStats,
    QgsRasterBlock,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterProjector,
)

from .aoi import PolygonMask
from .errors import FactSegError
from .grid import OutputGrid, native_resolution, transform_extent
from .settings import SCALING_MODES

SAMPLE_SIZE = 250_000
CUT_LOW, CUT_HIGH = 0.02, 0.98
NUMPY_TYPES = {
    Qgis.DataType.Byte: np.uint8,
    Qgis.DataType.UInt16: np.uint16,
    Qgis.DataType.Int16: np.int16,
    Qgis.DataType.UInt32: np.uint32,
    Qgis.DataType.Int32: np.int32,
    Qgis.DataType.Float32: np.float32,
    Qgis.DataType.Float64: np.float64,
}
ARGB_TYPES = (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)


def default_bands(layer: QgsRasterLayer) -> tuple[int, int, int]:
    """The bands the layer's own RGB renderer shows, else 1, 2, 3, else band 1 as grey."""
    renderer = layer.renderer()
    if isinstance(renderer, QgsMultiBandColorRenderer):
        bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
        if all(0 < b <= layer.bandCount() for b in bands):
            return bands  # type: ignore[return-value]
    return (1, 2, 3) if layer.bandCount() >= 3 else (1, 1, 1)


def parse_bands(text: str | Sequence[int] | None, band_count: int) -> tuple[int, int, int] | None:
    """'4,3,2' (or a sequence) → (4, 3, 2); one band → grey; None/'' → None (use the default)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        values = [int(v) for v in (text.replace(";", ",").split(",") if isinstance(text, str) else text)]
    except ValueError as exc:
        raise FactSegError(f"Band mapping {text!r} is not a list of band numbers such as '1,2,3'.") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise FactSegError(f"Band mapping needs 3 bands (red, green, blue) or one grey band, got {text!r}.")
    for band in values:
        if not 1 <= band <= band_count:
            raise FactSegError(f"Band {band} does not exist: the layer has {band_count} band(s).")
    return values[0], values[1], values[2]


def block_to_array(
    block: QgsRasterBlock, height: int, width: int, outside: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(values, invalid) of a raster block; ARGB blocks give an h×w×4 uint8 array (R, G, B, A).

    ``outside``: the pixels known to lie outside the source (computed geometrically by the caller); when given,
    it stands in for the block's nodata bitmap, which PyQGIS can only read pixel by pixel.
    """
    data_type = block.dataType()
    raw = bytes(block.data())
    if data_type in ARGB_TYPES:
        packed = np.frombuffer(raw, dtype=np.uint32, count=height * width).reshape(height, width)
        rgba = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255, packed >> 24], axis=-1)
        rgba = rgba.astype(np.uint8)
        if data_type == Qgis.DataType.ARGB32_Premultiplied:
            alpha = rgba[..., 3:4].astype(np.float32)
            colour = rgba[..., :3].astype(np.float32) * 255.0 / np.maximum(alpha, 1.0)
            rgba[..., :3] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
        invalid = rgba[..., 3] == 0
        return rgba, invalid | _bitmap_nodata(block, height, width, outside)
    if data_type not in NUMPY_TYPES:
        raise FactSegError(f"Raster data type {data_type} is not supported (bands must be integer or float).")
    values = np.frombuffer(raw, dtype=NUMPY_TYPES[data_type], count=height * width).reshape(height, width)
    invalid = np.zeros((height, width), dtype=bool)
    if values.dtype.kind == "f":
        invalid |= ~np.isfinite(values)
    if block.hasNoDataValue():
        nodata = block.noDataValue()
        # floats compare in their own precision (a float32 band's nodata is stored as a double); integers
        # compare exactly, without casting an out-of-range nodata value into the band's type
        invalid |= values == (values.dtype.type(nodata) if values.dtype.kind == "f" else nodata)
    else:
        invalid |= _bitmap_nodata(block, height, width, outside)
    return values, invalid


def _bitmap_nodata(block: QgsRasterBlock, height: int, width: int, outside: np.ndarray | None) -> np.ndarray:
    """Pixels flagged in the block's nodata bitmap (outside the source, user nodata), if it has one."""
    if not block.hasNoData() or block.hasNoDataValue():
        return np.zeros((height, width), dtype=bool)
    if outside is not None:
        return outside
    is_no_data = block.isNoData  # the slow path: one call per pixel
    return np.array([[is_no_data(r, c) for c in range(width)] for r in range(height)], dtype=bool).reshape(
        height, width)


class RasterReader:
    """Reads the rows/columns of an :class:`OutputGrid` from a provider clone; callable as the client's reader."""

    def __init__(
        self,
        provider: QgsRasterDataProvider,
        grid: OutputGrid,
        bands: Sequence[int] = (1, 2, 3),
        scaling: str = "auto",
        context: QgsCoordinateTransformContext | None = None,
        native: tuple[float, float] | None = None,
        mask: PolygonMask | None = None,
    ) -> None:
        if scaling not in SCALING_MODES:
            raise FactSegError(f"Unknown scaling {scaling!r}: use one of {', '.join(SCALING_MODES)}.")
        self.provider = provider
        self.grid = grid
        self.scaling = scaling
        self.context = context or QgsCoordinateTransformContext()
        self.argb = provider.dataType(1) in ARGB_TYPES
        self.bands = (1, 1, 1) if self.argb else tuple(int(b) for b in bands)
        for band in self.bands:
            if not 1 <= band <= provider.bandCount():
                raise FactSegError(f"Band {band} does not exist: the layer has {provider.bandCount()} band(s).")
        self._source = provider
        self._projector = None
        if grid.crs.isValid() and provider.crs().isValid() and grid.crs != provider.crs():
            self._projector = QgsRasterProjector()
            self._projector.setCrs(provider.crs(), grid.crs, self.context)
            self._projector.setInput(provider)
            self._source = self._projector
        can_resample = provider.providerCapabilities() & QgsRasterDataProvider.ProviderCapability.ProviderHintCanPerformProviderResampling
        if native is not None and can_resample:
            resampled = not (np.isclose(native[0], grid.res_x) and np.isclose(native[1], grid.res_y))
            if resampled:  # smoother than nearest neighbour when the ground resolution changes (on the clone only)
                provider.enableProviderResampling(True)
                provider.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
                provider.setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Average)
        self.mask = mask
        self.scales: dict[int, tuple[float, float] | None] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_layer(
        cls,
        layer: QgsRasterLayer,
        grid: OutputGrid,
        bands: Sequence[int] | None = None,
        scaling: str = "auto",
        context: QgsCoordinateTransformContext | None = None,
        mask: PolygonMask | None = None,
    ) -> RasterReader:
        """Clone the layer's provider (call on the thread that owns the layer, normally the main thread)."""
        if layer is None or not layer.isValid() or layer.dataProvider() is None:
            raise FactSegError("The raster layer is not valid (its data source cannot be read).")
        provider = layer.dataProvider().clone()
        if provider is None:
            raise FactSegError(f"The data provider of layer {layer.name()!r} cannot be used outside the map view.")
        return cls(provider, grid, bands or default_bands(layer), scaling, context, native_resolution(layer), mask)

    def prepare(self) -> None:
        """Fix the per-band value ranges for scaling (once per job; reads statistics, so call it in the task)."""
        if self.scales is not None:
            return
        scales: dict[int, tuple[float, float] | None] = {}
        extent = transform_extent(self.grid.extent, self.grid.crs, self.provider.crs(), self.context)
        extent = extent.intersect(self.provider.extent()) if self.provider.extent().isFinite() else extent
        for band in sorted(set(self.bands)):
            scales[band] = None if self.argb else self._band_scale(band, extent)
        self.scales = scales

    def _band_scale(self, band: int, extent) -> tuple[float, float] | None:
        data_type = self.provider.dataType(band)
        if self.scaling == "none" or (self.scaling == "auto" and data_type == Qgis.DataType.Byte):
            return None
        if self.scaling == "minmax":
            stats = self.provider.bandStatistics(
                band, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max, extent, SAMPLE_SIZE)
            low, high = stats.minimumValue, stats.maximumValue
        else:
            low, high = self.provider.cumulativeCut(band, CUT_LOW, CUT_HIGH, extent, SAMPLE_SIZE)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise FactSegError(f"Band {band} has no valid pixels in the extent: nothing to scale.")
        return float(low), float(max(high, low + 1e-6))

    def __call__(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return self.read(y0, x0, y1, x1)

    def read(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (h×w×3) and valid mask (h×w bool) of grid rows y0..y1, columns x0..x1 (end exclusive)."""
        if self.scales is None:
            self.prepare()
        height, width = y1 - y0, x1 - x0
        extent = self.grid.sub_extent(y0, x0, y1, x1)
        with self._lock:
            if self.argb:
                block = self._block(1, extent, width, height)
                rgba, invalid = block_to_array(block, height, width, self._outside(1, y0, x0, y1, x1))
                return np.ascontiguousarray(rgba[..., :3]), self._valid(invalid, y0, x0, y1, x1)
            rgb = np.empty((height, width, 3), dtype=np.uint8)
            invalid = np.zeros((height, width), dtype=bool)
            cache: dict[int, np.ndarray] = {}
            for channel, band in enumerate(self.bands):
                if band not in cache:
                    block = self._block(band, extent, width, height)
                    values, band_invalid = block_to_array(block, height, width, self._outside(band, y0, x0, y1, x1))
                    invalid |= band_invalid
                    cache[band] = self._to_uint8(values, self.scales[band])  # type: ignore[index]
                rgb[..., channel] = cache[band]
        return rgb, self._valid(invalid, y0, x0, y1, x1)

    def _outside(self, band: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray | None:
        """Pixels whose centre lies outside the source raster, when that is all a nodata bitmap can hold (same
        CRS, no user nodata ranges); None when only the bitmap itself can tell."""
        if self._projector is not None or self.provider.userNoDataValues(band):
            return None
        source = self.provider.extent()
        g = self.grid
        xs = g.x_min + (np.arange(x0, x1) + 0.5) * g.res_x
        ys = g.y_max - (np.arange(y0, y1) + 0.5) * g.res_y
        inside_x = (xs >= source.xMinimum()) & (xs <= source.xMaximum())
        inside_y = (ys >= source.yMinimum()) & (ys <= source.yMaximum())
        return ~(inside_y[:, None] & inside_x[None, :])

    def _valid(self, invalid: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        valid = ~invalid
        if self.mask is not None:
            valid &= self.mask.window(y0, x0, y1, x1)
        return valid

    def _block(self, band: int, extent, width: int, height: int) -> QgsRasterBlock:
        block = self._source.block(band, extent, width, height)
        if block is None or not block.isValid() or block.width() != width or block.height() != height:
            raise FactSegError(
                f"Could not read band {band} of the layer for {extent.toString(3)}: "
                f"{self.provider.error().summary() or 'the provider returned no data'}.")
        return block

    @staticmethod
    def _to_uint8(values: np.ndarray, scale: tuple[float, float] | None) -> np.ndarray:
        if scale is None:
            if values.dtype == np.uint8:
                return values
            return np.clip(np.nan_to_num(values.astype(np.float64)), 0, 255).astype(np.uint8)
        low, high = scale
        scaled = (values.astype(np.float64) - low) * 255.0 / (high - low)
        return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
