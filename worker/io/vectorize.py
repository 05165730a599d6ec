"""Polygons and per-class area statistics from a class raster (GDAL/OGR only; used by the CLI and in QGIS).

Areas are reported in square metres whatever the raster's CRS: projected CRSs use their linear unit; for
geographic CRSs the statistics use the area of each pixel row on the authalic sphere (exact for a lat/lon grid
cell) and polygons are measured on the EASE-Grid 2.0 equal-area projection (EPSG:6933), so analysts never see
"square degrees". Polygons are valid (OGC/GEOS), so they go on as training labels unchanged; they carry the
mean confidence of their pixels when the run wrote a confidence raster, and the GeoPackage has a spatial index
(R-tree), so QGIS draws and selects fast at any scale.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from .outputs import OutputSet
from .raster_output import NODATA

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


def _open_confidence(path: str | os.PathLike | None, classes_ds: gdal.Dataset) -> gdal.Dataset | None:
    """A confidence raster on the class raster's grid, or None when no path is given."""
    if path is None:
        return None
    ds = gdal.Open(str(path))
    if (ds.RasterXSize, ds.RasterYSize) != (classes_ds.RasterXSize, classes_ds.RasterYSize):
        raise ValueError(f"confidence raster {path} is {ds.RasterXSize}×{ds.RasterYSize} px, the class raster "
                         f"{classes_ds.RasterXSize}×{classes_ds.RasterYSize}: they must share one grid")
    return ds


def class_statistics(
    raster_path: str | os.PathLike, classes: Sequence[dict], *, confidence_path: str | os.PathLike | None = None
) -> list[dict]:
    """Pixel count, area (m²) and share of valid pixels for every class of the table, read block by block.

    With ``confidence_path`` (the run's confidence raster) each entry also has ``mean_confidence``: the mean
    probability of the chosen class over its pixels (None for a class without pixels).
    """
    ds = gdal.Open(str(raster_path))
    band = ds.GetRasterBand(1)
    conf_ds = _open_confidence(confidence_path, ds)
    conf_band = conf_ds.GetRasterBand(1) if conf_ds is not None else None
    areas = pixel_areas_m2(ds)
    counts = np.zeros(256, dtype=np.int64)
    area_sums = np.zeros(256, dtype=np.float64)
    conf_sums = np.zeros(256, dtype=np.float64)
    for y0 in range(0, ds.RasterYSize, ROWS_PER_READ):
        rows = min(ROWS_PER_READ, ds.RasterYSize - y0)
        block = band.ReadAsArray(0, y0, ds.RasterXSize, rows)
        per_row = np.stack([np.bincount(r, minlength=256) for r in block]) if rows else np.zeros((0, 256))
        counts += per_row.sum(axis=0).astype(np.int64)
        area_sums += (per_row * areas[y0 : y0 + rows, None]).sum(axis=0)
        if conf_band is not None:
            conf = conf_band.ReadAsArray(0, y0, ds.RasterXSize, rows).astype(np.float64)
            conf_sums += np.bincount(block.ravel(), weights=conf.ravel(), minlength=256)
    valid = int(counts.sum() - counts[NODATA])
    stats = []
    for c in classes:
        class_id = int(c["id"])
        item = {
            "id": class_id,
            "name": str(c["name"]),
            "pixels": int(counts[class_id]),
            "area_m2": float(area_sums[class_id]),
            "share": float(counts[class_id] / valid) if valid else 0.0,
        }
        if conf_band is not None:
            item["mean_confidence"] = float(conf_sums[class_id] / counts[class_id]) if counts[class_id] else None
        stats.append(item)
    return stats


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
    raster_path: str | os.PathLike,
    gpkg_path: str | os.PathLike,
    classes: Sequence[dict],
    layer_name: str = "objects",
    *,
    confidence_path: str | os.PathLike | None = None,
    outputs: OutputSet | None = None,
) -> int:
    """One feature per connected region (8-connected) of each non-background class, written to a GeoPackage
    layer with a spatial index. Returns the feature count.

    Geometries are valid MultiPolygons (OGC/GEOS: QGIS Processing accepts them under any invalid-geometry
    setting); a region whose pixels meet only at corners is one feature of several parts touching there.

    Attributes: ``class_id``, ``class_name``, ``area_m2`` (square metres: the CRS's linear unit squared when
    projected, measured on the EASE-Grid 2.0 equal-area projection, EPSG:6933, when geographic; map units² when
    the raster has no CRS) and ``mean_confidence`` (mean probability of the class over the polygon's pixels,
    from ``confidence_path``; NULL without one). ``outputs``: the run's :class:`OutputSet`, which then holds the
    GeoPackage under its partial name until the caller commits; without it the file is published at once.
    """
    gpkg_path = Path(gpkg_path)
    own = outputs is None
    if outputs is None:
        gpkg_path.parent.mkdir(parents=True, exist_ok=True)
        outputs = OutputSet()
    tmp = outputs.add(gpkg_path)
    try:
        count = _write_polygons(raster_path, tmp, classes, layer_name, confidence_path)
        if own:
            outputs.commit()
        return count
    except BaseException:
        outputs.discard(gpkg_path)
        raise


def _object_mask(band: gdal.Band, width: int, height: int) -> gdal.Dataset:
    """In-memory mask of the object pixels (neither background nor nodata): what Polygonize turns into shapes."""
    mask_ds = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    mask_band = mask_ds.GetRasterBand(1)
    for y0 in range(0, height, ROWS_PER_READ):
        block = band.ReadAsArray(0, y0, width, min(ROWS_PER_READ, height - y0))
        mask_band.WriteArray(((block != NODATA) & (block != BACKGROUND_ID)).astype(np.uint8), 0, y0)
    return mask_ds


def _write_polygons(raster_path: str | os.PathLike, tmp: Path, classes: Sequence[dict], layer_name: str,
                    confidence_path: str | os.PathLike | None) -> int:
    """Polygonize into a scratch GeoPackage, then copy each object, made valid, with its attributes to ``tmp``."""
    names = {int(c["id"]): str(c["name"]) for c in classes}
    ds = gdal.Open(str(raster_path))
    band = ds.GetRasterBand(1)
    srs = _spatial_ref(ds)
    conf_ds = _open_confidence(confidence_path, ds)
    mask_ds = _object_mask(band, ds.RasterXSize, ds.RasterYSize)
    with tempfile.TemporaryDirectory(prefix="factseg-polygons-") as folder:
        scratch = ogr.GetDriverByName("GPKG").CreateDataSource(str(Path(folder) / "scratch.gpkg"))
        out = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        try:
            shapes = scratch.CreateLayer("shapes", srs=srs, geom_type=ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
            shapes.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
            shapes.StartTransaction()
            gdal.Polygonize(band, mask_ds.GetRasterBand(1), shapes, 0, ["8CONNECTED=8"])
            shapes.CommitTransaction()
            means = _mean_confidence_per_feature(scratch, "shapes", ds, conf_ds) if conf_ds is not None else None
            layer = _objects_layer(out, layer_name, srs)
            return _copy_objects(shapes, layer, names, means, _area_transform(srs))
        finally:
            out = scratch = None  # closes the GeoPackages (writes the spatial index) before renames or removal


def _objects_layer(out: ogr.DataSource, layer_name: str, srs: osr.SpatialReference | None) -> ogr.Layer:
    """The output layer: MultiPolygon, because an 8-connected object whose pixels touch only at a corner is
    valid only as several polygons (one ring through that corner would touch itself)."""
    layer = out.CreateLayer(layer_name, srs=srs, geom_type=ogr.wkbMultiPolygon, options=["SPATIAL_INDEX=YES"])
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("area_m2", ogr.OFTReal))
    layer.CreateField(ogr.FieldDefn("mean_confidence", ogr.OFTReal))
    return layer


def _copy_objects(shapes: ogr.Layer, layer: ogr.Layer, names: dict[int, str], means: np.ndarray | None,
                  area: tuple[osr.CoordinateTransformation | None, float]) -> int:
    """One feature per object, its geometry valid (OGC/GEOS), with class, area and mean confidence."""
    transform, factor = area
    layer.StartTransaction()
    count = 0
    shapes.ResetReading()
    for shape in shapes:
        geom = valid_multipolygon(shape.GetGeometryRef())
        if geom is None:
            continue
        class_id = shape.GetFieldAsInteger("class_id")
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(geom)
        feature.SetField("class_id", class_id)
        feature.SetField("class_name", names.get(class_id, f"class_{class_id}"))
        measured = geom.Clone()
        if transform is not None:
            measured.Transform(transform)
        feature.SetField("area_m2", measured.GetArea() * factor)
        fid = shape.GetFID()
        if means is not None and 0 <= fid < len(means) and np.isfinite(means[fid]):
            feature.SetField("mean_confidence", float(means[fid]))
        else:
            feature.SetFieldNull("mean_confidence")
        layer.CreateFeature(feature)
        count += 1
    layer.CommitTransaction()
    return count


def valid_multipolygon(geom: ogr.Geometry | None) -> ogr.Geometry | None:
    """``geom`` as a valid MultiPolygon (GEOS's MakeValid where it is not valid), or None when no area is left.

    Polygonize traces an 8-connected object's outline as one ring; where two of its pixels meet only at a corner
    that ring passes the corner twice, which OGC and GEOS call a self-intersection (QGIS Processing then refuses
    the polygon). MakeValid splits such a ring at the corner without moving a vertex, so the area is unchanged.
    """
    if geom is None or geom.IsEmpty():
        return None
    if not is_valid(geom):
        return made_valid(geom)
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    _add_polygons(geom, parts)
    return parts if not parts.IsEmpty() else None


def is_valid(geom: ogr.Geometry) -> bool:
    """OGC validity (GEOS), without GEOS's warning for every invalid ring."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return bool(geom.IsValid())
    finally:
        gdal.PopErrorHandler()


def made_valid(geom: ogr.Geometry) -> ogr.Geometry | None:
    """The polygonal part of GEOS's MakeValid of ``geom`` as a linear 2-D MultiPolygon; None when no area is left
    (a polygon that collapses to lines or points)."""
    geom = geom.GetLinearGeometry() if geom.HasCurveGeometry() else geom.Clone()
    geom.FlattenTo2D()
    fixed = geom.MakeValid()
    if fixed is None:
        return None
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    _add_polygons(fixed, parts)
    return parts if not parts.IsEmpty() and is_valid(parts) else None


def _add_polygons(geom: ogr.Geometry, parts: ogr.Geometry) -> None:
    """The polygons of ``geom`` (a polygon, multipolygon or collection; lines and points left out) into ``parts``."""
    kind = ogr.GT_Flatten(geom.GetGeometryType())
    if kind == ogr.wkbPolygon:
        if geom.GetArea() > 0:
            parts.AddGeometry(geom)
    elif kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        for i in range(geom.GetGeometryCount()):
            _add_polygons(geom.GetGeometryRef(i), parts)


def _mean_confidence_per_feature(out: ogr.DataSource, layer_name: str, ds: gdal.Dataset,
                                 conf_ds: gdal.Dataset) -> np.ndarray:
    """Mean confidence of each polygon, indexed by feature id: the polygons are burnt back onto the raster's
    grid (their edges lie on pixel edges, so each pixel centre falls in exactly the polygon it came from)."""
    width, height = ds.RasterXSize, ds.RasterYSize
    with tempfile.TemporaryDirectory(prefix="factseg-labels-") as folder:
        labels = gdal.GetDriverByName("GTiff").Create(
            str(Path(folder) / "labels.tif"), width, height, 1, gdal.GDT_Int32,
            ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
        labels.SetGeoTransform(ds.GetGeoTransform())
        sql = out.ExecuteSQL(f'SELECT fid * 1 AS label, geom FROM "{layer_name}"')
        try:
            gdal.RasterizeLayer(labels, [1], sql, options=["ATTRIBUTE=label"])
        finally:
            out.ReleaseResultSet(sql)
        label_band, conf_band = labels.GetRasterBand(1), conf_ds.GetRasterBand(1)
        sums, counts = np.zeros(1), np.zeros(1)
        for y0 in range(0, height, ROWS_PER_READ):
            rows = min(ROWS_PER_READ, height - y0)
            ids = label_band.ReadAsArray(0, y0, width, rows).ravel()
            conf = conf_band.ReadAsArray(0, y0, width, rows).ravel().astype(np.float64)
            size = max(len(sums), int(ids.max(initial=0)) + 1)
            sums = np.pad(sums, (0, size - len(sums))) + np.bincount(ids, weights=conf, minlength=size)
            counts = np.pad(counts, (0, size - len(counts))) + np.bincount(ids, minlength=size)
        label_band = labels = None  # close before the folder goes
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
