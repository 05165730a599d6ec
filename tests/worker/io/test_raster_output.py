"""The class GeoTIFF writer and the vector/statistics helpers, on real GDAL files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from worker.io.outputs import OutputSet
from worker.io.raster_output import (
    ClassRasterWriter,
    confidence_path,
    overview_factors,
    partial_path,
    read_class_table,
)
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


def test_overviews_are_internal_and_keep_classes_classes(tmp_path):
    out = tmp_path / "big.tif"
    rows = np.arange(600)[:, None]
    grid = np.where(rows % 4 == 1, 1, np.where(rows % 4 == 3, 2, 0)).repeat(520, axis=1).astype(np.uint8)
    grid[:, :7] = 1
    grid[500:] = 255
    conf = np.random.default_rng(0).random((600, 520), dtype=np.float32)
    with ClassRasterWriter(out, 520, 600, (0, 1, 0, 0, 0, -1), _wkt(32633), CLASSES, confidence=True) as w:
        w.write(0, 0, grid, conf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "big.tif.aux.xml", "big_confidence.tif"]
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert [(band.GetOverview(i).XSize, band.GetOverview(i).YSize) for i in range(band.GetOverviewCount())] == [
        (260, 300), (130, 150)]
    half = band.GetOverview(0).ReadAsArray()
    assert set(np.unique(half)) <= {0, 1, 2, 255}  # never a blend of class ids
    assert (half[250:] == 255).all() and (half[:250, :3] == 1).all()  # nodata and a solid object survive
    assert band.GetRasterColorTable().GetColorEntry(2) == (0, 191, 127, 255)  # style and names are kept
    assert band.GetCategoryNames()[2] == "roundabout"
    level = gdal.Open(f"GTIFF_DIR:2:{out}")
    assert level.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    assert level.GetRasterBand(1).GetBlockSize() == [256, 256]
    confidence = gdal.Open(str(confidence_path(out)))
    conf_half = confidence.GetRasterBand(1).GetOverview(0).ReadAsArray()
    np.testing.assert_allclose(conf_half[:250], conf[:500].reshape(250, 2, 260, 2).mean(axis=(1, 3)), rtol=1e-5)


def test_small_rasters_get_no_overviews_and_overviews_can_be_turned_off(tmp_path):
    assert overview_factors(256, 200) == [] and overview_factors(257, 10) == [2]
    assert overview_factors(20000, 20000) == [2, 4, 8, 16, 32, 64, 128]
    out = tmp_path / "plain.tif"
    with ClassRasterWriter(out, 600, 600, (0, 1, 0, 0, 0, -1), "", CLASSES, overviews=False) as w:
        w.write(0, 0, np.zeros((600, 600), np.uint8))
    assert gdal.Open(str(out)).GetRasterBand(1).GetOverviewCount() == 0


def test_writer_in_a_callers_output_set_publishes_only_with_the_set(tmp_path):
    out = tmp_path / "c.tif"
    out.write_bytes(b"previous result")
    with OutputSet() as outputs:
        writer = ClassRasterWriter(out, 60, 40, (0, 1, 0, 0, 0, -1), _wkt(32633), CLASSES, outputs=outputs)
        writer.write(0, 0, _class_grid())
        assert writer.finish() == writer.commit() == partial_path(out) == writer.written_path  # idempotent
        assert class_statistics(writer.written_path, CLASSES)[1]["pixels"] == 54  # readable before publishing
        assert out.read_bytes() == b"previous result"
        outputs.commit()
    assert writer.written_path == out
    np.testing.assert_array_equal(gdal.Open(str(out)).ReadAsArray(), _class_grid())
    assert not partial_path(out).exists()


def test_polygons_carry_mean_confidence_and_a_spatial_index(tmp_path):
    out = tmp_path / "c.tif"
    grid = _class_grid()
    conf = np.full(grid.shape, 0.5, np.float32)
    conf[5:10, 5:10] = 0.9  # half of the 50 px ship is surer
    conf[20:30, 30:34] = np.linspace(0.2, 0.6, 40, dtype=np.float32).reshape(10, 4)
    with ClassRasterWriter(out, 60, 40, (500000.0, 0.5, 0, 4000000.0, 0, -0.5), _wkt(32633), CLASSES,
                           confidence=True) as w:
        w.write(0, 0, grid, conf)
    gpkg = tmp_path / "objects.gpkg"
    assert polygonize_classes(out, gpkg, CLASSES, confidence_path=confidence_path(out)) == 3
    vector = ogr.Open(str(gpkg))
    layer = vector.GetLayer(0)
    rows = sorted((f.GetField("class_name"), f.GetField("area_m2"), f.GetField("mean_confidence")) for f in layer)
    assert [r[:2] for r in rows] == [("roundabout", 10.0), ("ship", 1.0), ("ship", 12.5)]
    assert [r[2] for r in rows] == pytest.approx([0.4, 0.5, 0.7], abs=1e-6)
    index = vector.ExecuteSQL("SELECT HasSpatialIndex('objects', 'geom')")
    assert index.GetNextFeature().GetField(0) == 1
    vector.ReleaseResultSet(index)
    stats = {s["name"]: s for s in class_statistics(out, CLASSES, confidence_path=confidence_path(out))}
    assert stats["ship"]["mean_confidence"] == pytest.approx((25 * 0.9 + 29 * 0.5) / 54)
    assert stats["roundabout"]["mean_confidence"] == pytest.approx(0.4, abs=1e-6)
    assert list(tmp_path.glob(".*")) == []


def test_polygons_without_confidence_have_null_mean_confidence(tmp_path):
    out = tmp_path / "c.tif"
    with ClassRasterWriter(out, 60, 40, (0, 1, 0, 0, 0, -1), _wkt(32633), CLASSES) as w:
        w.write(0, 0, _class_grid())
    gpkg = tmp_path / "o.gpkg"
    polygonize_classes(out, gpkg, CLASSES)
    vector = ogr.Open(str(gpkg))
    layer = vector.GetLayer(0)
    assert [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(4)] == [
        "class_id", "class_name", "area_m2", "mean_confidence"]
    assert all(f.IsFieldNull("mean_confidence") for f in layer)
    assert "mean_confidence" not in class_statistics(out, CLASSES)[0]


def test_polygons_in_a_callers_output_set_wait_for_its_commit(tmp_path):
    out = tmp_path / "c.tif"
    with ClassRasterWriter(out, 60, 40, (0, 1, 0, 0, 0, -1), _wkt(32633), CLASSES) as w:
        w.write(0, 0, _class_grid())
    gpkg = tmp_path / "o.gpkg"
    with OutputSet() as outputs:
        assert polygonize_classes(out, gpkg, CLASSES, outputs=outputs) == 3
        assert partial_path(gpkg).is_file() and not gpkg.exists()
    assert not partial_path(gpkg).exists() and not gpkg.exists()  # never committed: nothing left
    with pytest.raises(ValueError, match="must share one grid"):
        polygonize_classes(out, gpkg, CLASSES, confidence_path=_small_raster(tmp_path / "small.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "c.tif.aux.xml", "small.tif"]


def _small_raster(path):
    gdal.GetDriverByName("GTiff").Create(str(path), 5, 5, 1, gdal.GDT_Float32).FlushCache()
    return path
