"""The output pixel grid of a request: CRS, origin, pixel size and size in pixels.

The grid uses the layer's CRS (no resampling across projections), the requested extent transformed into it and
clipped to the layer, and a pixel size either in map units or as a ground sampling distance in cm/px. Ground
distances are measured on the ellipsoid at the extent's centre, so geographic CRSs (degrees) and Web Mercator
(whose map unit is not a ground metre) get pixels of the asked ground size. At the native resolution the grid is
snapped to the layer's own pixels, so the model sees the original pixels, unresampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsDistanceArea,
    QgsPointXY,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRectangle,
    QgsUnitTypes,
)

from .errors import FactSegError

MAX_PIXELS = 2**31 - 1
_EPS = 1e-6


@dataclass(frozen=True)
class OutputGrid:
    """A north-up pixel grid: top-left corner, pixel size (map units of ``crs``) and size in pixels."""

    crs: QgsCoordinateReferenceSystem
    x_min: float
    y_max: float
    res_x: float
    res_y: float
    width: int
    height: int

    @property
    def extent(self) -> QgsRectangle:
        return self.sub_extent(0, 0, self.height, self.width)

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        return (self.x_min, self.res_x, 0.0, self.y_max, 0.0, -self.res_y)

    def sub_extent(self, y0: int, x0: int, y1: int, x1: int) -> QgsRectangle:
        """Map extent of the pixel rows y0..y1 and columns x0..x1 (end exclusive)."""
        return QgsRectangle(
            self.x_min + x0 * self.res_x,
            self.y_max - y1 * self.res_y,
            self.x_min + x1 * self.res_x,
            self.y_max - y0 * self.res_y,
        )


def native_resolution(layer: QgsRasterLayer) -> tuple[float, float] | None:
    """The layer's pixel size in its map units, or None for providers without one (WMS, XYZ tiles)."""
    origin = native_origin(layer)
    return None if origin is None else (origin[2], origin[3])


def native_origin(layer: QgsRasterLayer) -> tuple[float, float, float, float] | None:
    """(x_min, y_max, pixel width, pixel height) of the layer's own grid, or None without one.

    Taken from the source's GDAL geotransform where there is one: the numbers the file stores, exactly.
    ``extent / size`` (what ``rasterUnitsPerPixelX`` returns) rounds: 1e-05 degrees comes out as
    9.999999999999533e-06, and the output grid would no longer be the input's.
    """
    provider = layer.dataProvider()
    if provider is None or not (provider.capabilities() & QgsRasterDataProvider.Capability.Size):
        return None
    geotransform = _gdal_geotransform(layer)
    if geotransform is not None:
        return geotransform[0], geotransform[3], geotransform[1], -geotransform[5]
    extent = layer.extent()
    return (extent.xMinimum(), extent.yMaximum(), float(layer.rasterUnitsPerPixelX()),
            float(layer.rasterUnitsPerPixelY()))


def _gdal_geotransform(layer: QgsRasterLayer) -> tuple[float, ...] | None:
    """The north-up geotransform of a GDAL layer's source, if it matches the provider's size and extent."""
    if layer.providerType() != "gdal":
        return None
    provider = layer.dataProvider()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds = gdal.Open(provider.dataSourceUri().split("|")[0])
    finally:
        gdal.PopErrorHandler()
    if ds is None or (ds.RasterXSize, ds.RasterYSize) != (provider.xSize(), provider.ySize()):
        return None
    gt = tuple(float(v) for v in ds.GetGeoTransform(can_return_null=True) or ())
    if len(gt) != 6 or gt[2] != 0.0 or gt[4] != 0.0 or gt[1] <= 0 or gt[5] >= 0:
        return None
    extent = provider.extent()
    if not (math.isclose(gt[0], extent.xMinimum(), abs_tol=abs(gt[1]) * 1e-3)
            and math.isclose(gt[3], extent.yMaximum(), abs_tol=abs(gt[5]) * 1e-3)):
        return None
    return gt


def ground_metres_per_unit(
    crs: QgsCoordinateReferenceSystem, centre: QgsPointXY, span: float, context: QgsCoordinateTransformContext
) -> tuple[float, float]:
    """Ground metres covered by one map unit along x and along y at ``centre`` (measured over ``span`` units)."""
    area = QgsDistanceArea()
    area.setSourceCrs(crs, context)
    area.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
    half = span / 2.0
    dx = area.measureLine(QgsPointXY(centre.x() - half, centre.y()), QgsPointXY(centre.x() + half, centre.y()))
    dy = area.measureLine(QgsPointXY(centre.x(), centre.y() - half), QgsPointXY(centre.x(), centre.y() + half))
    if not area.willUseEllipsoid():  # measured in map units: convert the unit, no projection scale known
        factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters)
        dx, dy = dx * factor, dy * factor
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise FactSegError(f"Cannot measure ground distances in {crs.authid() or 'the layer CRS'} at this extent.")
    return dx / span, dy / span


def ground_sample_distance(
    crs: QgsCoordinateReferenceSystem, extent: QgsRectangle, res_x: float, res_y: float,
    context: QgsCoordinateTransformContext,
) -> float:
    """Ground metres per pixel of a ``res_x`` × ``res_y`` (map units) pixel at the centre of ``extent``.

    The mean of the two sides (they differ only for odd grids); the inverse of ``cm_per_px`` resolutions, so a
    model card's ``gsd_m`` asked back as a resolution gives the same grid.
    """
    span = max(extent.width(), extent.height()) * 0.01 or 1e-3
    mx, my = ground_metres_per_unit(crs, extent.center(), span, context)
    return 0.5 * (res_x * mx + res_y * my)


def resolution_in_map_units(
    value: float, units: str, crs: QgsCoordinateReferenceSystem, extent: QgsRectangle,
    context: QgsCoordinateTransformContext,
) -> tuple[float, float]:
    """Pixel size (x, y) in map units for ``value`` given in ``units`` ('map_units' or 'cm_per_px')."""
    if value <= 0:
        raise FactSegError(f"The resolution must be positive, got {value}.")
    if units == "map_units":
        return value, value
    if units != "cm_per_px":
        raise FactSegError(f"Unknown resolution unit {units!r}: use map units or cm per pixel.")
    span = max(extent.width(), extent.height()) * 0.01 or 1e-3
    mx, my = ground_metres_per_unit(crs, extent.center(), span, context)
    metres = value / 100.0
    return metres / mx, metres / my


def transform_extent(
    extent: QgsRectangle, source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext,
) -> QgsRectangle:
    """Bounding box of ``extent`` in ``target`` (densified edges), with a plain-words error if it cannot be."""
    if not source.isValid() or not target.isValid() or source == target:
        return QgsRectangle(extent)
    try:
        return QgsCoordinateTransform(source, target, context).transformBoundingBox(extent)
    except QgsCsException as exc:
        raise FactSegError(
            f"The extent cannot be transformed from {source.authid()} to the layer's CRS {target.authid()}: {exc}"
        ) from exc


def plan_grid(
    layer: QgsRasterLayer,
    extent: QgsRectangle | None = None,
    extent_crs: QgsCoordinateReferenceSystem | None = None,
    resolution: float = 0.0,
    units: str = "map_units",
    context: QgsCoordinateTransformContext | None = None,
) -> OutputGrid:
    """The grid for segmenting ``extent`` (in ``extent_crs``; default the whole layer) of ``layer``.

    ``resolution`` <= 0 means the layer's native pixel size. Raises FactSegError for an empty extent, an extent
    off the raster, a layer without a native resolution when none is given, or a grid too large for one file.
    """
    context = context or QgsCoordinateTransformContext()
    crs = layer.crs()
    layer_extent = layer.extent()
    if extent is None:
        request = QgsRectangle(layer_extent)
    else:
        if extent.isNull() or extent.isEmpty() or extent.width() <= 0 or extent.height() <= 0:
            raise FactSegError("The extent is empty: choose an area with a width and a height.")
        request = transform_extent(extent, extent_crs or crs, crs, context)
    clipped = request.intersect(layer_extent)
    if clipped.isEmpty() or clipped.width() <= 0 or clipped.height() <= 0:
        raise FactSegError(
            f"The extent lies outside the raster layer {layer.name()!r}: nothing to segment there. "
            f"Layer extent: {layer_extent.toString(3)} ({crs.authid()})."
        )
    origin = native_origin(layer)
    native = None if origin is None else (origin[2], origin[3])
    if resolution <= 0:
        if native is None:
            raise FactSegError(
                f"Layer {layer.name()!r} (a {layer.providerType()} layer) has no native pixel size: "
                "set the resolution (map units or cm/px)."
            )
        res_x, res_y = native
    else:
        res_x, res_y = resolution_in_map_units(resolution, units, crs, clipped, context)
        if res_x > clipped.width() or res_y > clipped.height():
            unit = QgsUnitTypes.toString(crs.mapUnits())
            raise FactSegError(
                f"A pixel of {res_x:.6g} × {res_y:.6g} {unit} is larger than the extent "
                f"({clipped.width():.6g} × {clipped.height():.6g} {unit}): choose a finer resolution"
                + (" (this layer's map units are degrees: give the resolution in cm/px)." if crs.isGeographic()
                   else "."))
    snapped = native is not None and math.isclose(res_x, native[0], rel_tol=1e-9) and math.isclose(
        res_y, native[1], rel_tol=1e-9)
    if snapped:
        ox, oy = origin[0], origin[1]  # type: ignore[index]
        c0 = math.floor((clipped.xMinimum() - ox) / res_x + _EPS)
        c1 = math.ceil((clipped.xMaximum() - ox) / res_x - _EPS)
        r0 = math.floor((oy - clipped.yMaximum()) / res_y + _EPS)
        r1 = math.ceil((oy - clipped.yMinimum()) / res_y - _EPS)
        x_min, y_max, width, height = ox + c0 * res_x, oy - r0 * res_y, c1 - c0, r1 - r0
    else:
        x_min, y_max = clipped.xMinimum(), clipped.yMaximum()
        width = math.ceil(clipped.width() / res_x - _EPS)
        height = math.ceil(clipped.height() / res_y - _EPS)
    width, height = max(1, width), max(1, height)
    if width * height > MAX_PIXELS:
        raise FactSegError(
            f"The request is {width} × {height} pixels, too large for one output file: "
            "choose a smaller extent or a coarser resolution."
        )
    return OutputGrid(crs, x_min, y_max, res_x, res_y, width, height)
