"""Polygons and per-class area statistics from a class raster (GDAL/OGR only; used by the CLI and in QGIS).

Areas are reported in square metres whatever the raster's CRS: projected CRSs use their linear unit, and
geographic CRSs use the area of each pixel row on the authalic sphere (exact for a lat/lon grid cell), so
analysts never see "square degrees".
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from .raster_output import NODATA, partial_path

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

AUTHALIC_RADIUS_M = 6371007.181
BACKGROUND_ID = 0
ROWS_PER_READ = 512


def _spatial_ref(ds: gdal.Dataset) -> osr.SpatialReference | None:
    wkt = ds.GetProjection()
    if not wkt:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def pixel_areas_m2(ds: gdal.Dataset) -> np.ndarray:
    """Area in m² of one pixel in each row of ``ds`` (rows differ only for geographic CRSs)."""
    gt = ds.GetGeoTransform()
    if gt[2] or gt[4]:
        raise ValueError("rotated rasters are not supported for area statistics")
    srs = _spatial_ref(ds)
    rows = ds.RasterYSize
    if srs is not None and srs.IsGeographic():
        top = gt[3] + gt[5] * np.arange(rows)
        bottom = top + gt[5]
        lat_top = np.radians(np.clip(top, -90, 90))
        lat_bottom = np.radians(np.clip(bottom, -90, 90))
        dlon = math.radians(abs(gt[1]))
        return AUTHALIC_RADIUS_M**2 * dlon * np.abs(np.sin(lat_top) - np.sin(lat_bottom))
    unit = srs.GetLinearUnits() if srs is not None else 1.0
    return np.full(rows, abs(gt[1] * gt[5]) * unit * unit)


def class_statistics(raster_path: str | os.PathLike, classes: Sequence[dict]) -> list[dict]:
    """Pixel count, area (m²) and share of valid pixels for every class of the table, read block by block."""
    ds = gdal.Open(str(raster_path))
    band = ds.GetRasterBand(1)
    areas = pixel_areas_m2(ds)
    counts = np.zeros(256, dtype=np.int64)
    area_sums = np.zeros(256, dtype=np.float64)
    for y0 in range(0, ds.RasterYSize, ROWS_PER_READ):
        rows = min(ROWS_PER_READ, ds.RasterYSize - y0)
        block = band.ReadAsArray(0, y0, ds.RasterXSize, rows)
        per_row = np.stack([np.bincount(r, minlength=256) for r in block]) if rows else np.zeros((0, 256))
        counts += per_row.sum(axis=0).astype(np.int64)
        area_sums += (per_row * areas[y0 : y0 + rows, None]).sum(axis=0)
    valid = int(counts.sum() - counts[NODATA])
    return [
        {
            "id": int(c["id"]),
            "name": str(c["name"]),
            "pixels": int(counts[int(c["id"])]),
            "area_m2": float(area_sums[int(c["id"])]),
            "share": float(counts[int(c["id"])] / valid) if valid else 0.0,
        }
        for c in classes
    ]


def _area_transform(srs: osr.SpatialReference | None) -> tuple[osr.CoordinateTransformation | None, float]:
    """How to measure polygon areas in m²: a transform to an equal-area CRS for geographic data, else a factor."""
    if srs is None:
        return None, 1.0
    if srs.IsGeographic():
        equal_area = osr.SpatialReference()
        equal_area.ImportFromEPSG(6933)  # WGS 84 / NSIDC EASE-Grid 2.0 Global (cylindrical equal-area)
        equal_area.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return osr.CoordinateTransformation(srs, equal_area), 1.0
    return None, srs.GetLinearUnits() ** 2


def polygonize_classes(
    raster_path: str | os.PathLike, gpkg_path: str | os.PathLike, classes: Sequence[dict], layer_name: str = "objects"
) -> int:
    """One polygon per connected region of each non-background class (8-connected), with class id, name and
    area (m²), written to a GeoPackage (temporary name, renamed when complete). Returns the feature count."""
    gpkg_path = Path(gpkg_path)
    names = {int(c["id"]): str(c["name"]) for c in classes}
    ds = gdal.Open(str(raster_path))
    band = ds.GetRasterBand(1)
    srs = _spatial_ref(ds)
    mask_ds = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1, gdal.GDT_Byte)
    mask_band = mask_ds.GetRasterBand(1)
    for y0 in range(0, ds.RasterYSize, ROWS_PER_READ):
        block = band.ReadAsArray(0, y0, ds.RasterXSize, min(ROWS_PER_READ, ds.RasterYSize - y0))
        mask_band.WriteArray(((block != NODATA) & (block != BACKGROUND_ID)).astype(np.uint8), 0, y0)
    tmp = partial_path(gpkg_path)
    tmp.unlink(missing_ok=True)
    gpkg_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        layer = out.CreateLayer(layer_name, srs=srs, geom_type=ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
        layer.CreateField(ogr.FieldDefn("area_m2", ogr.OFTReal))
        layer.StartTransaction()
        gdal.Polygonize(band, mask_band, layer, 0, ["8CONNECTED=8"])
        transform, factor = _area_transform(srs)
        layer.ResetReading()
        count = 0
        for feature in layer:
            geom = feature.GetGeometryRef().Clone()
            if transform is not None:
                geom.Transform(transform)
            class_id = feature.GetFieldAsInteger("class_id")
            feature.SetField("class_name", names.get(class_id, f"class_{class_id}"))
            feature.SetField("area_m2", geom.GetArea() * factor)
            layer.SetFeature(feature)
            count += 1
        layer.CommitTransaction()
        out = None
        os.replace(tmp, gpkg_path)
        return count
    except BaseException:
        out = None
        tmp.unlink(missing_ok=True)
        raise
