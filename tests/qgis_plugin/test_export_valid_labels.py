"""The analyst's loop in real QGIS Processing, default settings: the plugin's own polygons are valid for QGIS and
export as training labels unchanged; invalid polygons an analyst draws are repaired or left out, and counted.

Processing's default invalid-geometry setting stops an algorithm at the first invalid feature; the first test
shows it does so here (so the others can fail), the export must not.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from plugin_support import UTM_GT, recording_feedback, scene, write_geotiff, write_label_polygons
from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer

from worker.io.vectorize import polygonize_classes

pytestmark = pytest.mark.qgis
Log = recording_feedback()



def run_export(**params) -> tuple[dict, Log]:
    import processing

    log = Log()
    try:
        return processing.run("factseg:export_training_data", params, feedback=log), log
    except QgsProcessingException as exc:
        raise AssertionError(f"the export failed: {log.lines[-2:]}") from exc


def class_raster(path: Path, ids: np.ndarray, gt=UTM_GT) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), ids.shape[1], ids.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(ids)
    ds = None
    return path


def exported_ids(out: Path, raster_gt, shape: tuple[int, int]) -> np.ndarray:
    """The export's masks painted back onto the raster's grid as class ids (254 where no tile reaches)."""
    manifest = json.loads((out / "export.json").read_text())
    colours = {tuple(c["color"]): c["id"] for c in manifest["classes"]}
    gt = manifest["geotransform"]
    row0, col0 = round((gt[3] - raster_gt[3]) / raster_gt[5]), round((gt[0] - raster_gt[0]) / raster_gt[1])
    painted = np.full(shape, 254, np.uint8)
    for tile in manifest["tiles"]:
        y0, x0, y1, x1 = tile["window"]
        rgb = gdal.Open(str(out / tile["split"] / "masks" / f"{tile['name']}_instance_color_RGB.png")).ReadAsArray()
        ids = np.full(rgb.shape[1:], 253, np.uint8)
        for colour, class_id in colours.items():
            ids[(rgb.transpose(1, 2, 0) == colour).all(axis=-1)] = class_id
        painted[row0 + y0:row0 + y1, col0 + x0:col0 + x1] = ids
    return painted


def check_round_trip(image: Path, truth: Path, tmp_path: Path) -> None:
    """Polygons from ``truth`` (the plugin's polygonizer) are valid in QGIS and export back to ``truth``."""
    truth_ids = gdal.Open(str(truth)).ReadAsArray()
    classes = [{"id": i, "name": f"class_{i}"} for i in range(16)]
    objects = tmp_path / "objects.gpkg"
    polygonize_classes(truth, objects, classes)
    layer = QgsVectorLayer(f"{objects}|layername=objects", "objects", "ogr")
    assert layer.isValid() and layer.featureCount() > 50
    invalid = [f.id() for f in layer.getFeatures() if not f.geometry().isGeosValid()]
    assert not invalid, f"QGIS finds invalid polygons {invalid[:5]}"
    result, log = run_export(INPUT=str(image), LABELS=str(objects), CLASS_FIELD="class_id",
                             OUTPUT=str(tmp_path / "export"))
    assert result["TRAIN_TILES"] > 0 and not any("Invalid label" in line for line in log.lines)
    painted = exported_ids(tmp_path / "export", gdal.Open(str(truth)).GetGeoTransform(), truth_ids.shape)
    covered = painted != 254
    assert covered.mean() > 0.9  # the labels' bounding box: nearly the whole raster
    expected = np.where(truth_ids == 255, 0, truth_ids)
    np.testing.assert_array_equal(painted[covered], expected[covered])


def test_processings_default_stops_at_an_invalid_polygon(provider, tmp_path):
    """What the export escapes: a native algorithm under the same default settings refuses a bow-tie."""
    import processing

    labels = write_label_polygons(tmp_path / "labels.gpkg", [(BOW_TIE, "vessel")])
    with pytest.raises(QgsProcessingException):
        processing.run("native:centroids", {"INPUT": str(labels), "ALL_PARTS": False, "OUTPUT": "memory:"},
                       feedback=QgsProcessingFeedback())


def test_demo_scene_polygons_export_unchanged(provider, tmp_path):
    """The demo scene (training.synthetic) and the plugin's polygons of its classes."""
    from training.synthetic import write_scene

    image, truth = write_scene(tmp_path, 1280, 1024, 0)
    check_round_trip(image, truth, tmp_path)


def test_real_aerial_image_polygons_export_unchanged(provider, isaid_sample, tmp_path):
    """A real iSAID image (P0003, a bus depot) georeferenced at 0.5 m in UTM, its mask as the class raster."""
    from factseg_core.classes import ISAID_CLASSES

    rgb = gdal.Open(str(isaid_sample / "val" / "images" / "P0003.png")).ReadAsArray()[:3]
    image = write_geotiff(tmp_path / "P0003.tif", rgb, UTM_GT, 32633)
    colours = gdal.Open(str(isaid_sample / "val" / "masks" / "P0003_instance_color_RGB.png")).ReadAsArray()
    ids = np.full(colours.shape[1:], 255, np.uint8)
    for c in ISAID_CLASSES:
        ids[(colours.transpose(1, 2, 0) == np.array(c.color, np.uint8)).all(axis=-1)] = c.id
    check_round_trip(image, class_raster(tmp_path / "P0003_classes.tif", ids), tmp_path)


#: Label shapes in pixel coordinates (column, row) on UTM_GT.
BOX = [(20, 20), (60, 20), (60, 50), (20, 50)]
BOW_TIE = [(100, 20), (160, 80), (160, 20), (100, 80)]  # two triangles meeting at (130, 50)
FLAT = [(20, 120), (60, 120), (90, 120)]  # all on one line: no area at all



def test_invalid_user_polygons_are_repaired_or_left_out_and_counted(provider, tmp_path):
    raster = write_geotiff(tmp_path / "scene.tif", scene(200, 300), UTM_GT, 32633)
    labels = write_label_polygons(tmp_path / "labels.gpkg", [(BOX, "vehicle"), (BOW_TIE, "vessel"), (FLAT, "vehicle")])
    result, log = run_export(INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", OUTPUT=str(tmp_path / "out"),
                             EXTENT=f"{UTM_GT[0]},{UTM_GT[0] + 300 * UTM_GT[1]},{UTM_GT[3] + 200 * UTM_GT[5]},"
                                    f"{UTM_GT[3]} [EPSG:32633]", VAL_FRACTION=0.0, PATCH=320)
    assert result["TRAIN_TILES"] == 1
    counted = [line for line in log.lines if "Invalid label polygons" in line]
    assert counted == ["Invalid label polygons: 1 repaired (split where their outline crosses or touches itself), "
                       "1 left out (no area)."]
    ids = exported_ids(tmp_path / "out", UTM_GT, (200, 300))
    vehicle, vessel = 1, 2  # text classes in sorted order
    assert (ids[20:50, 20:60] == vehicle).all() and (ids[20:50, :20] == 0).all()
    assert ids[50, 110] == vessel and ids[50, 150] == vessel  # the left and the right triangle
    assert ids[25, 130] == 0 and ids[75, 130] == 0  # above and below the crossing: outside both
    assert (ids[110:130, :] == 0).all()  # the flat polygon burnt nothing
