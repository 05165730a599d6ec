"""The plugin's polygons are valid (OGC/GEOS) and burn back to exactly the class raster they came from.

GDAL's Polygonize traces an 8-connected object whose pixels meet only at a corner as one ring through that corner
twice: a self-intersection that stops QGIS Processing. Each test first shows that raw Polygonize makes such rings
on its raster (so the test can fail), then that ``polygonize_classes`` writes none, one feature per object.
Real GDAL files throughout: crafted corner cases, the demo scene (training/synthetic.py) and real iSAID masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from scipy import ndimage

from worker.io.training_export import valid_label
from worker.io.vectorize import pixel_areas_m2, polygonize_classes

gdal.UseExceptions()
ogr.UseExceptions()
GT = (500000.0, 0.5, 0.0, 4000000.0, 0.0, -0.5)
CLASSES = [{"id": i, "name": f"class_{i}"} for i in range(16)]

#: Pixel configurations that make self-touching rings: a diagonal pair, a ring closed through two corners, an
#: object around a hole that meets its outline at a corner, a checkerboard; each in its own class.
CORNER_CASES = [
    np.array([[1, 0], [0, 1]]),
    np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]]),
    np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1]]),
    np.indices((5, 5)).sum(axis=0) % 2,
]


def write_classes(path: Path, ids: np.ndarray, gt=GT, epsg: int = 32633) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), ids.shape[1], ids.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(ids)
    ds = None
    return path


def corner_case_raster() -> np.ndarray:
    ids = np.zeros((40, 60), np.uint8)
    for i, case in enumerate(CORNER_CASES):
        h, w = case.shape
        ids[3:3 + h, 3 + 12 * i:3 + 12 * i + w] = case * (i + 1)
    rng = np.random.default_rng(0)  # and a noisy patch, as a weak model makes
    ids[15:38, 3:57] = (rng.random((23, 54)) > 0.55) * rng.integers(5, 8, (23, 54))
    return ids


def raw_invalid_rings(path: Path) -> int:
    """How many rings GDAL's Polygonize alone (8-connected, as the plugin asks) makes invalid."""
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    ids = band.ReadAsArray()
    mask = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1, gdal.GDT_Byte)
    mask.GetRasterBand(1).WriteArray(((ids != 0) & (ids != 255)).astype(np.uint8))
    memory = ogr.GetDriverByName("Memory").CreateDataSource("raw")
    layer = memory.CreateLayer("raw")
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    gdal.Polygonize(band, mask.GetRasterBand(1), layer, 0, ["8CONNECTED=8"])
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return sum(1 for feature in layer if not feature.GetGeometryRef().IsValid())
    finally:
        gdal.PopErrorHandler()


def check_polygons(raster: Path, gpkg: Path) -> int:
    """Every feature valid, a MultiPolygon, one per 8-connected object of its class; burnt back by class_id they
    give the class raster exactly. Returns the feature count."""
    ds = gdal.Open(str(raster))
    ids = ds.GetRasterBand(1).ReadAsArray()
    vector = ogr.Open(str(gpkg))
    layer = vector.GetLayer(0)
    features = list(layer)
    invalid = [f.GetFID() for f in features if not f.GetGeometryRef().IsValid()]
    assert not invalid, f"invalid polygons {invalid[:5]}"
    assert layer.GetGeomType() == ogr.wkbMultiPolygon
    per_class: dict[int, int] = {}
    for feature in features:
        per_class[feature.GetField("class_id")] = per_class.get(feature.GetField("class_id"), 0) + 1
        assert feature.GetField("area_m2") == pytest.approx(feature.GetGeometryRef().GetArea())
    objects = {int(c): ndimage.label(ids == c, structure=np.ones((3, 3)))[1]
               for c in np.unique(ids) if c not in (0, 255)}
    assert per_class == objects
    burnt = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1, gdal.GDT_Byte)
    burnt.SetGeoTransform(ds.GetGeoTransform())
    burnt.SetProjection(ds.GetProjection())
    layer.ResetReading()
    gdal.RasterizeLayer(burnt, [1], layer, options=["ATTRIBUTE=class_id"])
    expected = np.where(ids == 255, 0, ids)
    np.testing.assert_array_equal(burnt.GetRasterBand(1).ReadAsArray(), expected)
    return len(features)


def test_corner_touching_pixels_give_valid_multipolygons(tmp_path):
    raster = write_classes(tmp_path / "classes.tif", corner_case_raster())
    assert raw_invalid_rings(raster) >= len(CORNER_CASES)
    count = polygonize_classes(raster, tmp_path / "objects.gpkg", CLASSES)
    assert check_polygons(raster, tmp_path / "objects.gpkg") == count
    vector = ogr.Open(str(tmp_path / "objects.gpkg"))
    diagonal = [f for f in vector.GetLayer(0) if f.GetField("class_id") == 1]
    assert len(diagonal) == 1 and diagonal[0].GetGeometryRef().GetGeometryCount() == 2  # one object, two parts


def test_geographic_rasters_too(tmp_path):
    """The same on a lat/lon grid (areas measured in EPSG:6933), and with a confidence raster."""
    ids = corner_case_raster()
    raster = write_classes(tmp_path / "classes.tif", ids, (15.0, 5e-6, 0.0, 45.0, 0.0, -5e-6), 4326)
    conf = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "conf.tif"), ids.shape[1], ids.shape[0], 1,
                                                gdal.GDT_Float32)
    conf.GetRasterBand(1).WriteArray(np.full(ids.shape, 0.75, np.float32))
    conf = None
    polygonize_classes(raster, tmp_path / "objects.gpkg", CLASSES, confidence_path=tmp_path / "conf.tif")
    vector = ogr.Open(str(tmp_path / "objects.gpkg"))
    features = list(vector.GetLayer(0))
    assert features and all(f.GetGeometryRef().IsValid() for f in features)
    assert all(f.GetField("mean_confidence") == pytest.approx(0.75) for f in features)
    pixel_m2 = pixel_areas_m2(gdal.Open(str(raster))).mean()  # ~0.39 m × 0.56 m at 45° N (sphere vs ellipsoid: 0.2 %)
    assert all(f.GetField("area_m2") == pytest.approx(f.GetGeometryRef().GetArea() / 25e-12 * pixel_m2, rel=0.01)
               for f in features)


def test_demo_scene_polygons_are_valid(tmp_path):
    """The demo scene's ground truth (training.synthetic's scene, the one `make demo` segments)."""
    from training.synthetic import write_scene

    _, truth = write_scene(tmp_path, 1280, 1024, 0)
    assert raw_invalid_rings(truth) > 0
    polygonize_classes(truth, tmp_path / "objects.gpkg", CLASSES)
    assert check_polygons(truth, tmp_path / "objects.gpkg") > 100


def isaid_class_ids(mask_png: Path) -> np.ndarray:
    """An iSAID colour mask as class ids (255 where a colour is no class)."""
    from factseg_core.classes import ISAID_CLASSES

    rgb = gdal.Open(str(mask_png)).ReadAsArray().transpose(1, 2, 0)
    ids = np.full(rgb.shape[:2], 255, np.uint8)
    for c in ISAID_CLASSES:
        ids[(rgb == np.array(c.color, np.uint8)).all(axis=-1)] = c.id
    return ids


@pytest.mark.parametrize("name", ["train/masks/P0005", "val/masks/P0003"])
def test_real_aerial_masks_give_valid_polygons(isaid_sample, tmp_path, name):
    """Real iSAID masks (a bus depot), georeferenced at 0.5 m in UTM, as class rasters."""
    raster = write_classes(tmp_path / "classes.tif", isaid_class_ids(isaid_sample / f"{name}_instance_color_RGB.png"))
    if name.endswith("P0003"):
        assert raw_invalid_rings(raster) > 0
    polygonize_classes(raster, tmp_path / "objects.gpkg", CLASSES)
    assert check_polygons(raster, tmp_path / "objects.gpkg") > 50


def test_valid_label_repairs_bow_ties_and_drops_what_has_no_area():
    square = ogr.CreateGeometryFromWkt("POLYGON ((0 0,4 0,4 4,0 4,0 0))")
    wkb, repaired = valid_label(bytes(square.ExportToWkb()))
    assert not repaired and wkb == bytes(square.ExportToWkb())  # a valid polygon passes byte for byte
    wkb, repaired = valid_label(bytes(ogr.CreateGeometryFromWkt("POLYGON ((0 0,4 4,4 0,0 4,0 0))").ExportToWkb()))
    fixed = ogr.CreateGeometryFromWkb(wkb)
    assert repaired and fixed.IsValid() and fixed.GetGeometryCount() == 2 and fixed.GetArea() == pytest.approx(8)
    wkb, repaired = valid_label(bytes(ogr.CreateGeometryFromWkt("POLYGON ((0 0,4 0,8 0,0 0))").ExportToWkb()))
    assert repaired and wkb is None
