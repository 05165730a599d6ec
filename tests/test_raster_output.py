"""The class GeoTIFF writer and the vector/statistics helpers, on real GDAL files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from worker.io.raster_output import ClassRasterWriter, confidence_path, partial_path, read_class_table
from worker.io.vectorize import class_statistics, pixel_areas_m2, polygonize_classes

CLASSES = [
    {"id": 0, "name": "background", "color": [0, 0, 0]},
    {"id": 1, "name": "ship", "color": [0, 0, 63]},
    {"id": 2, "name": "roundabout", "color": [0, 191, 127]},
]


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def _class_grid() -> np.ndarray:
    grid = np.zeros((40, 60), np.uint8)
    grid[5:10, 5:15] = 1  # 50 px ship
    grid[20:30, 30:34] = 2  # 40 px roundabout
    grid[22:24, 50:52] = 1  # 4 px ship
    grid[35:, :] = 255  # nodata rows
    return grid


def test_writer_produces_complete_styled_geotiff(tmp_path):
    out = tmp_path / "classes.tif"
    grid = _class_grid()
    geotransform = (500000.0, 0.5, 0.0, 4000000.0, 0.0, -0.5)
    with ClassRasterWriter(out, 60, 40, geotransform, _wkt(32633), CLASSES) as writer:
        writer.write(0, 0, grid[:20])
        assert not out.exists() and partial_path(out).exists()  # never visible before completion
        writer.write(20, 0, grid[20:])
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    np.testing.assert_array_equal(band.ReadAsArray(), grid)
    assert ds.GetGeoTransform() == geotransform
    assert osr.SpatialReference(wkt=ds.GetProjection()).GetAuthorityCode(None) == "32633"
    assert band.GetRasterColorTable().GetColorEntry(2) == (0, 191, 127, 255)
    assert band.GetCategoryNames()[:3] == ["background", "ship", "roundabout"]
    assert read_class_table(out) == CLASSES
    assert json.loads(band.GetMetadataItem("FACTSEG_CLASSES"))[1]["name"] == "ship"
    structure = ds.GetMetadata("IMAGE_STRUCTURE")
    assert structure.get("COMPRESSION") == "DEFLATE"
    assert band.GetBlockSize() == [256, 256]
    assert not partial_path(out).exists()


def test_failure_leaves_no_file(tmp_path):
    out = tmp_path / "classes.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with ClassRasterWriter(out, 10, 10, (0, 1, 0, 0, 0, -1), _wkt(3857), CLASSES, confidence=True) as writer:
            writer.write(0, 0, np.zeros((5, 10), np.uint8), np.ones((5, 10), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_blocks(tmp_path):
    writer = ClassRasterWriter(tmp_path / "c.tif", 10, 10, (0, 1, 0, 0, 0, -1), "", CLASSES)
    with pytest.raises(ValueError, match="outside"):
        writer.write(8, 0, np.zeros((5, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        writer.write(0, 0, np.zeros((5, 10), np.int32))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_confidence_raster_written_beside(tmp_path):
    out = tmp_path / "c.tif"
    grid = _class_grid()
    conf = np.full(grid.shape, 0.75, np.float32)
    with ClassRasterWriter(out, 60, 40, (0, 1, 0, 0, 0, -1), _wkt(32633), CLASSES, confidence=True) as writer:
        writer.write(0, 0, grid, conf)
    values = gdal.Open(str(confidence_path(out))).ReadAsArray()
    assert values[0, 0] == pytest.approx(0.75) and values[-1, 0] == -1.0


def test_polygons_and_statistics_projected(tmp_path):
    out = tmp_path / "c.tif"
    with ClassRasterWriter(out, 60, 40, (500000.0, 0.5, 0, 4000000.0, 0, -0.5), _wkt(32633), CLASSES) as w:
        w.write(0, 0, _class_grid())
    stats = {s["name"]: s for s in class_statistics(out, CLASSES)}
    assert stats["ship"]["pixels"] == 54 and stats["ship"]["area_m2"] == pytest.approx(54 * 0.25)
    assert stats["roundabout"]["pixels"] == 40
    valid = 35 * 60
    assert stats["background"]["share"] == pytest.approx((valid - 94) / valid)
    gpkg = tmp_path / "objects.gpkg"
    assert polygonize_classes(out, gpkg, CLASSES) == 3
    vector = ogr.Open(str(gpkg))
    layer = vector.GetLayer(0)
    features = sorted((f.GetField("class_name"), round(f.GetField("area_m2"), 6)) for f in layer)
    assert features == [("roundabout", 10.0), ("ship", 1.0), ("ship", 12.5)]
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"


def test_geographic_areas_in_square_metres(tmp_path):
    out = tmp_path / "geo.tif"
    # 1e-5 degree pixels at the equator: about 1.113 m × 1.106 m.
    with ClassRasterWriter(out, 60, 40, (10.0, 1e-5, 0, 0.0002, 0, -1e-5), _wkt(4326), CLASSES) as w:
        w.write(0, 0, _class_grid())
    areas = pixel_areas_m2(gdal.Open(str(out)))
    assert areas[0] == pytest.approx(1.2364, rel=1e-3)
    gpkg = tmp_path / "geo.gpkg"
    polygonize_classes(out, gpkg, CLASSES)
    vector = ogr.Open(str(gpkg))
    big_ship = max(f.GetField("area_m2") for f in vector.GetLayer(0) if f.GetField("class_id") == 1)
    assert big_ship == pytest.approx(50 * 1.2364, rel=1e-2)
