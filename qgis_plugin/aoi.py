"""Areas of interest: only pixels whose centre lies inside the chosen polygons are segmented; the others are
nodata (255) in the output, and chunks wholly outside are never sent to the worker."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from osgeo import gdal, ogr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsGeometry,
    QgsWkbTypes,
)

from .errors import FactSegError
from .grid import OutputGrid


def union_of(
    geometries: Iterable[QgsGeometry], source_crs: QgsCoordinateReferenceSystem,
    target_crs: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext,
) -> QgsGeometry:
    """The polygons merged into one geometry in ``target_crs``; FactSegError if there is no polygon area."""
    polygons = [QgsGeometry(g) for g in geometries
                if g is not None and not g.isEmpty() and g.type() == QgsWkbTypes.GeometryType.PolygonGeometry]
    if not polygons:
        raise FactSegError("The area of interest has no polygons: select polygon features to segment inside.")
    merged = QgsGeometry.unaryUnion(polygons)
    if source_crs.isValid() and target_crs.isValid() and source_crs != target_crs:
        try:
            merged.transform(QgsCoordinateTransform(source_crs, target_crs, context))
        except QgsCsException as exc:
            raise FactSegError(f"The polygons cannot be transformed to the layer's CRS: {exc}") from exc
    if merged.isEmpty() or merged.area() <= 0:
        raise FactSegError("The area of interest is empty.")
    return merged


class PolygonMask:
    """Rasterises an area of interest (in the grid's CRS) window by window (GDAL, pixel centres inside)."""

    def __init__(self, geometry: QgsGeometry, grid: OutputGrid) -> None:
        self.wkb = bytes(geometry.asWkb())
        self.grid = grid

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Boolean h×w mask: True inside the area of interest."""
        height, width = y1 - y0, x1 - x0
        g = self.grid
        raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
        raster.SetGeoTransform((g.x_min + x0 * g.res_x, g.res_x, 0.0, g.y_max - y0 * g.res_y, 0.0, -g.res_y))
        source = ogr.GetDriverByName("Memory").CreateDataSource("aoi")
        layer = source.CreateLayer("aoi", geom_type=ogr.wkbUnknown)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(self.wkb))
        layer.CreateFeature(feature)
        gdal.RasterizeLayer(raster, [1], layer, burn_values=[1])
        return raster.GetRasterBand(1).ReadAsArray().astype(bool)
