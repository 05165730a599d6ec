"""The model card through real QGIS and real workers: an export at RESOLUTION r records gsd_m = r; a model
fine-tuned from it is served with that card; factseg:segment without RESOLUTION reads a finer layer at r, with
RESOLUTION that resolution (and the log warns when the model sees far-off pixels); the dialog shows both
resolutions, defaults to the model's and says when keeping the layer's will degrade results; *Check worker* names
the device, the precision and the batch."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from osgeo import gdal
from plugin_support import (
    GEO_GT,
    UTM_GT,
    box_ring,
    recording_feedback,
    scene,
    start_worker,
    write_geotiff,
    write_label_polygons,
)
from project_paths import REPO_ROOT, VENV_PYTHON
from qgis.core import QgsProcessingFeedback, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication
from worker_support import TINY_CONFIG

pytestmark = pytest.mark.qgis
LogFeedback = recording_feedback()
HEIGHT, WIDTH = 160, 256  # at 0.5 m: 128 × 80 px at the model's 1 m
R = 1.0  # the export's resolution (metres, UTM map units)




@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("layer") / "scene.tif", scene(HEIGHT, WIDTH, seed=3), UTM_GT, 32633)


@pytest.fixture(scope="module")
def export(provider, raster, tmp_path_factory):
    import processing

    root = tmp_path_factory.mktemp("export")
    boxes = [((10, 10, 40, 60), "vehicle"), ((90, 150, 130, 220), "ship"), ((60, 80, 80, 100), "vehicle")]
    labels = str(write_label_polygons(root / "labels.gpkg", [(box_ring(box), name) for box, name in boxes]))
    out = root / "data"
    processing.run("factseg:export_training_data", {
        "INPUT": str(raster), "LABELS": labels, "CLASS_FIELD": "cls", "OUTPUT": str(out), "PATCH": 64,
        "RESOLUTION": R, "EXTENT": f"{UTM_GT[0]},{UTM_GT[0] + WIDTH * 0.5},{UTM_GT[3] - HEIGHT * 0.5},{UTM_GT[3]} "
                                  "[EPSG:32633]"}, feedback=QgsProcessingFeedback())
    return out


@pytest.fixture(scope="module")
def finetuned(export, tmp_path_factory):
    """A model fine-tuned from the export (tiny, 2 iterations, by training/train.py)."""
    run = tmp_path_factory.mktemp("run")
    (run / "tiny.yaml").write_text(TINY_CONFIG.replace("eval: {", "eval: {enabled: false, "))
    done = subprocess.run([str(VENV_PYTHON), "training/train.py", "--config", str(run / "tiny.yaml"), "--data-root",
                           str(export), "--work-dir", str(run), "--max-iters", "2", "--device", "cpu", "--threads",
                           "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return run / "final.pt"


@pytest.fixture(scope="module")
def worker(finetuned):
    """The fine-tuned model served by a real worker."""
    running = start_worker(finetuned)
    yield running
    running.stop()


def test_export_records_its_ground_resolution(export):
    manifest = json.loads((export / "export.json").read_text())
    # UTM's scale factor (0.9996 on the central meridian) makes a map metre 1.0004 ground metres
    assert manifest["gsd_m"] == pytest.approx(R, rel=1e-3)
    assert manifest["bands"] == {"red": 1, "green": 2, "blue": 3}
    train = manifest["class_pixels"]["train"]
    assert set(train) == {"background", "ship", "vehicle"} and train["vehicle"] > 0


def test_export_of_a_geographic_layer_measures_ground_metres(provider, tmp_path):
    import processing

    raster = write_geotiff(tmp_path / "geo.tif", scene(HEIGHT, WIDTH, seed=4), GEO_GT, 4326)
    labels = str(write_label_polygons(tmp_path / "labels.gpkg", [(box_ring((10, 10, 60, 80)), "vehicle")], GEO_GT,
                                      4326))
    for resolution, units in ((50.0, 1), (0.0, 0)):  # 50 cm/px; the native 5e-6° pixels
        out = tmp_path / f"data{units}"
        processing.run("factseg:export_training_data", {
            "INPUT": str(raster), "LABELS": labels, "CLASS_FIELD": "cls", "OUTPUT": str(out), "PATCH": 64,
            "RESOLUTION": resolution, "RESOLUTION_UNITS": units, "VAL_FRACTION": 0.0}, feedback=QgsProcessingFeedback())
        gsd = json.loads((out / "export.json").read_text())["gsd_m"]
        # 5e-6° at 45° N: 0.556 m north-south, 0.394 m east-west (the mean of the two sides)
        assert gsd == pytest.approx(0.5 if units else 0.475, rel=1e-2)


def test_finetuned_model_is_served_with_its_card(export, worker):
    from worker.client import WorkerClient

    with WorkerClient(worker.endpoint) as client:
        card = client.info()["model_card"]
    exported = json.loads((export / "export.json").read_text())
    assert card["gsd_m"] == exported["gsd_m"]
    assert card["classes"] == json.loads((export / "classes.json").read_text())
    assert card["bands"] == ["red", "green", "blue"]
    assert card["normalization"] == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    assert card["trained_on"]["tiles"] == exported["tiles_per_split"]


def _pixel(path) -> tuple[float, float, int, int]:
    ds = gdal.Open(str(path))
    gt = ds.GetGeoTransform()
    return gt[1], -gt[5], ds.RasterXSize, ds.RasterYSize


def _segment(raster, endpoint, out, **params):
    import processing

    feedback = LogFeedback()
    processing.run("factseg:segment", {"INPUT": str(raster), "WORKER": endpoint, "OUTPUT": str(out), **params},
                   feedback=feedback)
    return feedback.text()


def test_segment_defaults_to_the_models_resolution(provider, raster, worker, tmp_path):
    log = _segment(raster, worker.endpoint, tmp_path / "model.tif")
    res_x, res_y, width, height = _pixel(tmp_path / "model.tif")
    assert res_x == pytest.approx(R, rel=1e-6) and res_y == pytest.approx(R, rel=1e-6)
    assert (width, height) == (WIDTH // 2, HEIGHT // 2)
    assert "RESOLUTION not given: the model's ground resolution, 1 m/px" in log
    assert "results will degrade" not in log


def test_given_resolution_wins_and_the_log_warns(provider, raster, worker, tmp_path):
    log = _segment(raster, worker.endpoint, tmp_path / "native.tif", RESOLUTION=0.5)
    assert _pixel(tmp_path / "native.tif") == (0.5, 0.5, WIDTH, HEIGHT)
    assert gdal.Open(str(tmp_path / "native.tif")).GetGeoTransform() == UTM_GT
    assert "trained at 1 m/px but gets 0.5 m/px" in log and "results will degrade" in log
    log = _segment(raster, worker.endpoint, tmp_path / "near.tif", RESOLUTION=0.8)
    assert _pixel(tmp_path / "near.tif")[:2] == (0.8, 0.8) and "results will degrade" not in log


def test_dialog_shows_both_resolutions_and_the_warning(qgis_iface, raster, worker):
    from qgis_plugin.dialog import SegmentDialog

    QgsProject.instance().removeAllMapLayers()
    layer = QgsRasterLayer(str(raster), "scene")
    QgsProject.instance().addMapLayer(layer)
    dialog = SegmentDialog(qgis_iface)
    try:
        dialog.layer_combo.setLayer(layer)
        dialog.units_combo.setCurrentIndex(0)  # map units
        dialog.endpoint_radio.setChecked(True)
        dialog.endpoint_edit.setText(worker.endpoint)
        dialog.server_key_edit.setText("")
        dialog.client_key_widget.setFilePath("")
        dialog.authcfg_edit.setConfigId("")
        note = dialog.model_resolution.note
        assert dialog.resolution_spin.value() == 0.5 and "model: not known yet" in note.text()
        dialog.check_worker()
        deadline = time.monotonic() + 30
        while dialog.last_check is None:
            assert time.monotonic() < deadline, "Check worker did not answer"
            QCoreApplication.processEvents()
            time.sleep(0.01)
        assert dialog.last_check.ok
        label = dialog.classes_label.text()
        assert ", fp32, batch 1" in label and "(cpu)" in label
        assert "Layer: 0.5 m/px · model: 1 m/px" in note.text()
        assert dialog.resolution_spin.value() == pytest.approx(R, rel=1e-6)  # defaults to the model's
        assert "degrade" not in note.text()
        assert dialog.build_parameters()["RESOLUTION"] == 0.0  # the algorithm takes the model's
        dialog.native_button.click()  # the user keeps the layer's
        assert dialog.resolution_spin.value() == 0.5
        lines = note.text().splitlines()
        assert len(lines) == 2 and "results will degrade" in lines[1]
        params = dialog.build_parameters()
        assert (params["RESOLUTION"], params["RESOLUTION_UNITS"]) == (0.5, 0)  # the layer's grid, explicitly
        dialog.model_resolution.button.click()
        assert dialog.resolution_spin.value() == pytest.approx(R, rel=1e-6) and "degrade" not in note.text()
    finally:
        dialog.close()
        QgsProject.instance().removeAllMapLayers()


def _wait_for(condition, timeout_s=120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the dialog did not update in time"
        QCoreApplication.processEvents()
        time.sleep(0.02)


def test_dialog_reads_a_local_models_card(qgis_iface, raster, finetuned, tiny_checkpoint):
    from qgis_plugin.dialog import SegmentDialog

    QgsProject.instance().removeAllMapLayers()
    layer = QgsRasterLayer(str(raster), "scene")
    QgsProject.instance().addMapLayer(layer)
    dialog = SegmentDialog(qgis_iface)
    try:
        dialog.layer_combo.setLayer(layer)
        dialog.units_combo.setCurrentIndex(1)  # cm / pixel
        dialog.python_widget.setFilePath(str(VENV_PYTHON))
        dialog.local_radio.setChecked(True)
        dialog.model_widget.setFilePath(str(finetuned))
        note = dialog.model_resolution.note
        _wait_for(lambda: "model: 1 m/px" in note.text())
        assert dialog.resolution_spin.value() == pytest.approx(100 * R, rel=1e-3)  # defaults to the model's
        dialog.model_widget.setFilePath(str(tiny_checkpoint))  # a model whose card has no gsd_m
        _wait_for(lambda: "gives no gsd_m" in note.text())
        assert dialog.build_parameters()["RESOLUTION"] == 0.0  # the run keeps the layer's grid for it
    finally:
        dialog.close()
        QgsProject.instance().removeAllMapLayers()
