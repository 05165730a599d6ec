"""The Segment Layer path in a real headless QGIS with a real worker: the dialog's parameters run through
factseg:segment as a Processing task; progress, styled layers added on the main thread, cancel midway (the worker
stops, nothing added, no file under the output name), errors in words."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from plugin_support import PATCH, STRIDE, UTM_GT, read_classes, scene, wait_for_run, write_geotiff
from qgis.core import Qgis, QgsPalettedRasterRenderer, QgsProject, QgsRasterLayer, QgsTask
from qgis.PyQt.QtCore import QCoreApplication

pytestmark = pytest.mark.qgis



def make_params(tmp_path, endpoint, size=(160, 200), **kwargs):
    """factseg:segment parameters as the dialog builds them, for a scene layer added to the project."""
    src = write_geotiff(tmp_path / "in.tif", scene(*size, seed=7), UTM_GT, 32633)
    layer = QgsRasterLayer(str(src), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    params = {"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"), "PATCH": PATCH, "STRIDE": STRIDE}
    if endpoint:
        params["WORKER"] = endpoint
    params.update(kwargs)
    return params


def test_task_adds_styled_layers_and_reports_areas(plugin, worker, tmp_path, qgis_iface):
    from qgis.core import QgsCategorizedSymbolRenderer

    from qgis_plugin.styling import DISPLAY_PALETTE

    task = plugin.start_run(make_params(tmp_path, worker.endpoint, OUTPUT_VECTOR=str(tmp_path / "objects.gpkg")))
    progress = []
    task.progressChanged.connect(progress.append)
    wait_for_run(task)
    assert task.status() == QgsTask.TaskStatus.Complete and task.error is None
    assert progress and max(progress) == pytest.approx(100.0)
    raster, vector = task.added_layers
    assert raster.id() in QgsProject.instance().mapLayers() and vector.id() in QgsProject.instance().mapLayers()
    renderer = raster.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    labels = {c.value: c.label for c in renderer.classes()}
    # the legend lists the object classes found, by name; background (0) is left out, so it is transparent
    found = {s["id"] for s in json.loads(task.results["STATISTICS"]) if s["pixels"] > 0} - {0}
    assert set(labels) == found and 0 not in labels and labels.get(9, "small vehicle") == "small vehicle"
    assert all(c.color.getRgb()[:3] == DISPLAY_PALETTE[int(c.value) - 1] for c in renderer.classes())
    assert vector.featureCount() == task.results["FEATURE_COUNT"] > 0
    assert {"class_id", "class_name"} <= set(vector.fields().names())
    categorized = vector.renderer()
    assert isinstance(categorized, QgsCategorizedSymbolRenderer) and categorized.classAttribute() == "class_id"
    by_value = {int(c.value()): c for c in categorized.categories()}
    assert set(by_value) == found
    first = min(found)
    assert by_value[first].label() == labels[first]
    assert by_value[first].symbol().color().getRgb()[:3] == DISPLAY_PALETTE[first - 1]
    summary = task.summary_item  # stays in the message bar, with a Details button
    assert summary in qgis_iface.messageBar().items() and "Found: " in summary.text() and "%" in summary.text()
    assert "m²" in summary.details_html  # the areas, in the Details table
    ids, _ = read_classes(tmp_path / "classes.tif")
    assert ids.shape == (160, 200)
    assert plugin.runs == []


@pytest.mark.parametrize("via", ["plugin", "task manager"])
def test_cancel_midway_stops_worker_and_leaves_nothing(plugin, worker, tmp_path, qgis_iface, monkeypatch, via):
    from qgis_plugin.raster_reading import RasterReader
    from worker.client import WorkerClient

    params = make_params(tmp_path, worker.endpoint, size=(256, 256), CHUNK_SIZE=128)  # 4 chunks
    reads, gate = [], threading.Event()
    read = RasterReader.read

    def gated_read(self, *window):  # hold the 3rd chunk's read until the test has pressed cancel
        reads.append(window)
        if len(reads) == 3:
            gate.wait(30)
        return read(self, *window)

    monkeypatch.setattr(RasterReader, "read", gated_read)
    layers_before = set(QgsProject.instance().mapLayers())
    task = plugin.start_run(params)
    progress = []
    task.progressChanged.connect(progress.append)
    deadline = time.monotonic() + 60
    while not any(p > 0 for p in progress) and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert any(0 < p < 100 for p in progress), progress
    (task.cancel if via == "plugin" else task.task.cancel)()  # the run's cancel, or the QgsTask's own button
    gate.set()
    wait_for_run(task)
    assert task.status() == QgsTask.TaskStatus.Terminated
    assert "cancelled" in str(task.error)
    assert len(reads) < 5
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert not (tmp_path / "classes.tif").exists()
    assert not list(tmp_path.glob(".classes.tif*"))
    assert any("cancelled" in m for m in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Info))
    with WorkerClient(worker.endpoint) as client:  # the worker dropped the rest and is idle again
        deadline = time.monotonic() + 10
        while (state := client.status())["busy"] or state["queued"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.1)


def test_unreachable_worker_reported_in_message_bar(plugin, tmp_path, qgis_iface, monkeypatch):
    from qgis_plugin import job

    monkeypatch.setattr(job, "PROBE_TIMEOUT_S", 1.0)
    nobody = f"ipc://{tmp_path}/nobody.sock"
    task = plugin.start_run(make_params(tmp_path, nobody))
    wait_for_run(task)
    assert task.status() == QgsTask.TaskStatus.Terminated
    critical = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)
    assert critical and f"worker at {nobody} does not answer" in critical[-1]
    assert not (tmp_path / "classes.tif").exists()


def test_task_output_matches_processing_code_path(plugin, worker, tmp_path):
    """The task and the algorithm share run_job: same input, same classes."""
    import processing
    from qgis.core import QgsApplication

    from qgis_plugin.processing_provider import FactSegProvider

    task = plugin.start_run(make_params(tmp_path, worker.endpoint))
    wait_for_run(task)
    ids_task, _ = read_classes(tmp_path / "classes.tif")
    registry = QgsApplication.processingRegistry()
    if registry.providerById("factseg") is None:
        registry.addProvider(FactSegProvider())
    result = processing.run("factseg:segment", {"INPUT": str(tmp_path / "in.tif"), "WORKER": worker.endpoint,
                                                "PATCH": PATCH, "STRIDE": STRIDE,
                                                "OUTPUT": str(tmp_path / "alg.tif")})
    ids_alg, _ = read_classes(result["OUTPUT"])
    np.testing.assert_array_equal(ids_task, ids_alg)


def test_task_on_xyz_tiles(plugin, worker, tmp_path):
    """Pixels of an XYZ tile layer (QGIS's wms provider) read in the task thread, segmented, added."""
    from PIL import Image
    from qgis.core import QgsRectangle

    tiles = scene(512, 512, seed=9).astype(np.uint8).transpose(1, 2, 0)
    for x in (0, 1):
        for y in (0, 1):
            (tmp_path / "1" / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(tiles[y * 256:(y + 1) * 256, x * 256:(x + 1) * 256]).save(tmp_path / "1" / str(x) / f"{y}.png")
    uri = f"type=xyz&url=file://{tmp_path}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax=1"
    layer = QgsRasterLayer(uri, "tiles", "wms")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    zoom1 = 40075016.68557849 / 512
    origin = -20037508.342789244
    extent = QgsRectangle(origin + 100 * zoom1, -origin - 300 * zoom1, origin + 300 * zoom1, -origin - 100 * zoom1)
    from qgis_plugin.dialog_widgets import extent_text

    task = plugin.start_run({"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"), "WORKER": worker.endpoint,
                             "EXTENT": extent_text(extent, layer.crs()), "RESOLUTION": zoom1, "PATCH": PATCH,
                             "STRIDE": STRIDE})
    wait_for_run(task)
    assert task.status() == QgsTask.TaskStatus.Complete, task.error
    ids, ds = read_classes(tmp_path / "classes.tif")
    assert ids.shape == (200, 200) and ds.GetGeoTransform()[1] == pytest.approx(zoom1)
    from plugin_support import reference_classes

    expected = reference_classes(worker.endpoint, np.ascontiguousarray(tiles[100:300, 100:300]))
    np.testing.assert_array_equal(ids, expected)


def wait_check(dialog, timeout_s=30.0):
    """Run *Check worker* (a task) and wait for its answer, keeping the GUI thread free meanwhile."""
    task = dialog.check_worker()
    assert task is not None
    deadline = time.monotonic() + timeout_s
    while dialog.last_check is None or not dialog.check_button.isEnabled():
        assert time.monotonic() < deadline, "Check worker did not answer"
        QCoreApplication.processEvents()
        time.sleep(0.01)
    check, dialog.last_check = dialog.last_check, None
    return check


def test_dialog_check_worker_shows_its_classes(qgis_iface, worker):
    from qgis_plugin.dialog import SegmentDialog

    dialog = SegmentDialog(qgis_iface)
    dialog.endpoint_radio.setChecked(True)
    dialog.endpoint_edit.setText(worker.endpoint)
    for field in (dialog.server_key_edit, dialog.client_key_widget):  # a plain ipc worker: no keys
        field.setFilePath("") if hasattr(field, "setFilePath") else field.setText("")
    dialog.authcfg_edit.setConfigId("")
    check = wait_check(dialog)
    info = check.info if check.ok else None
    assert info is not None and len(info["classes"]) == 16
    assert "small&nbsp;vehicle" in dialog.classes_label.text() and "resnet18" in dialog.classes_label.text()
    assert "unauthenticated" in dialog.classes_label.text()
    dialog.show()
    QCoreApplication.processEvents()
    label = dialog.classes_label  # the legend wraps and gets the height it needs: nothing clipped
    assert label.wordWrap() and label.height() >= label.heightForWidth(label.width()) > 2 * label.fontMetrics().height()
    dialog.endpoint_edit.setText(f"ipc://{worker.endpoint[6:]}.nobody")
    started = time.monotonic()
    task = dialog.check_worker()
    assert time.monotonic() - started < 0.5 and task is not None  # the GUI thread does not wait for the worker
    while dialog.last_check is None:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert not dialog.last_check.ok
    assert "No FactSeg worker answers" in dialog.classes_label.text()
    dialog.close()


def test_local_worker_is_reused_between_tasks_and_stopped_at_unload(plugin, tiny_checkpoint, tmp_path):
    from plugin_support import VENV_PYTHON

    from qgis_plugin import local_workers

    local = {"MODEL": str(tiny_checkpoint), "WORKER_PYTHON": str(VENV_PYTHON), "DEVICE": 1}
    first = plugin.start_run(make_params(tmp_path, "", size=(64, 64), **local))
    wait_for_run(first)
    assert first.status() == QgsTask.TaskStatus.Complete, first.error
    endpoints = local_workers.running_endpoints()
    assert len(endpoints) == 1
    (tmp_path / "classes.tif").unlink()
    second = plugin.start_run(make_params(tmp_path, "", size=(64, 64), **local))
    wait_for_run(second)
    assert second.status() == QgsTask.TaskStatus.Complete, second.error
    assert local_workers.running_endpoints() == endpoints  # the same process served both
    plugin.unload()
    assert local_workers.running_endpoints() == []


def test_dialog_checks_the_worker_python_off_the_gui_thread(qgis_iface):
    """A Python is offered only once it is known to import torch: the dialog says what a bare one lacks."""
    from plugin_support import VENV_PYTHON

    from qgis_plugin.dialog import SegmentDialog

    dialog = SegmentDialog(qgis_iface)
    panel = dialog.python_panel
    assert panel.setup_button.text() == "Set up worker…"
    for python, ok in (("/usr/bin/python3", False), (str(VENV_PYTHON), True)):
        panel.setFilePath(python)
        started = time.monotonic()
        assert panel.check_python() is not None
        assert time.monotonic() - started < 0.5  # the probe (a subprocess importing torch) runs in a task
        deadline = time.monotonic() + 60
        while panel.check is None:
            assert time.monotonic() < deadline, panel.status_label.text()
            QCoreApplication.processEvents()
            time.sleep(0.02)
        assert panel.check.ok is ok, panel.status_label.text()
        if not ok:
            assert "torch" in panel.status_label.text()
    dialog.close()


def test_dialog_runs_against_a_curve_worker_with_keys_from_the_auth_database(plugin, tiny_checkpoint, tmp_path,
                                                                             qgis_iface):
    """The dialog's path with an authentication configuration: the client secret lives in QgsAuthManager, Check
    worker says the link is CURVE-authenticated, and the job runs through factseg:segment with AUTHCFG."""
    from auth_support import unlock_test_auth_db
    from plugin_support import start_curve_worker

    from qgis_plugin.auth import import_key_files
    from qgis_plugin.dialog import SegmentDialog
    from qgis_plugin.settings import PluginSettings

    unlock_test_auth_db()
    running, keys = start_curve_worker(tiny_checkpoint, tmp_path / "keys")
    try:
        authcfg = import_key_files("FactSeg test worker", keys["server_public"], keys["client_secret"])
        params = make_params(tmp_path, running.endpoint, size=(64, 96))
        dialog = SegmentDialog(qgis_iface)
        dialog.endpoint_radio.setChecked(True)
        dialog.endpoint_edit.setText(running.endpoint)
        dialog.authcfg_edit.setConfigId(authcfg)
        check = wait_check(dialog)
        assert check.ok and check.authenticated, check.message
        assert "CURVE-authenticated" in dialog.classes_label.text()
        dialog.layer_combo.setLayer(params["INPUT"])
        dialog.extent_combo.setCurrentIndex(0)  # the whole layer (the settings may remember another source)
        dialog.patch_spin.setValue(PATCH)
        dialog.stride_spin.setValue(STRIDE)
        dialog.output_widget.setFilePath(params["OUTPUT"])
        dialog.polygons_check.setChecked(False)
        dialog.accept()
        assert dialog.error_label.text() == "" and dialog.run.parameters["AUTHCFG"] == authcfg
        task = plugin.start(dialog.run)
        wait_for_run(task)
        assert task.status() == QgsTask.TaskStatus.Complete, task.error
        ids, _ = read_classes(tmp_path / "classes.tif")
        assert ids.shape == (64, 96)
        dialog.close()
    finally:
        running.stop()
        PluginSettings().save()  # the next dialog starts without this worker's keys
