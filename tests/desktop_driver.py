"""Runs inside the real QGIS desktop (``qgis --code``), driven by tests/test_plugin_desktop.py.

As an analyst would: the Segment Layer action opens the dialog, Check worker lists the classes, Segment runs the
job (a Processing task) against a real worker; then the map is rendered by QGIS's own renderer and compared with
the imagery alone, pixel by pixel, and factseg:segment is run once more with processing.runAndLoadResults.
Everything measured goes to the JSON file named by FACTSEG_DESKTOP_CONFIG's "results"; QGIS is then ended with
os._exit(0) (closing the main window would ask questions).
"""
from __future__ import annotations

import faulthandler
import json
import os
import time
import traceback

import numpy as np
from osgeo import gdal
from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QSize, QTimer
from qgis.PyQt.QtGui import QColor, QImage
from qgis.PyQt.QtWidgets import QDialogButtonBox

try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction

CONFIG = json.loads(open(os.environ["FACTSEG_DESKTOP_CONFIG"], encoding="utf-8").read())
RESULTS: dict = {}
_FAULTS = open(CONFIG["results"] + ".faults", "w")  # noqa: SIM115 (kept open: a crash writes here)
faulthandler.enable(_FAULTS)


def wait(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        QCoreApplication.processEvents()
        time.sleep(0.02)
    return True


def render(layers, extent, width: int, height: int) -> np.ndarray:
    """The map of ``layers`` over ``extent`` as QGIS renders it, h×w×3 uint8."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage().convertToFormat(QImage.Format.Format_RGB32)
    bits = image.constBits()
    bits.setsize(image.bytesPerLine() * height)
    bgra = np.frombuffer(bits, np.uint8).reshape(height, image.bytesPerLine() // 4, 4)[:, :width]
    return bgra[..., [2, 1, 0]].copy()


def describe_raster_style(layer) -> dict:
    renderer = layer.renderer()
    return {"type": renderer.type(), "classes": [[c.value, c.label, list(c.color.getRgb()[:3])]
                                                 for c in getattr(renderer, "classes", list)()]}


def describe_vector_style(layer) -> dict:
    renderer = layer.renderer()
    categories = getattr(renderer, "categories", list)()
    return {"type": renderer.type(), "field": getattr(renderer, "classAttribute", str)(),
            "categories": [[int(c.value()), c.label(), list(c.symbol().color().getRgb()[:3])] for c in categories]}


def compare(classes_path: str, imagery, classes_layer) -> dict:
    """Mean change (0..255) the class layer makes to the imagery, on background and on object pixels."""
    dataset = gdal.Open(classes_path)  # kept while its band is read (GDAL's Python bindings crash otherwise)
    ids = dataset.GetRasterBand(1).ReadAsArray()
    height, width = ids.shape
    extent = imagery.extent()
    alone = render([imagery], extent, width, height).astype(np.int16)
    over = render([classes_layer, imagery], extent, width, height).astype(np.int16)
    change = np.abs(over - alone).mean(axis=2)
    background, objects = ids == 0, (ids != 0) & (ids != 255)
    return {"background_change": float(change[background].mean()) if background.any() else None,
            "object_change": float(change[objects].mean()) if objects.any() else None,
            "background_share": float(background.mean()), "object_share": float(objects.mean()),
            "classes_present": sorted(int(v) for v in np.unique(ids[objects]))}


def dialog_run(plugin, imagery) -> None:
    from qgis.utils import iface

    action = iface.mainWindow().findChild(QAction, "factsegSegmentLayer")
    RESULTS["action_found"] = action is not None
    action.trigger()
    dialog = plugin.dialog
    RESULTS["dialog_visible"] = bool(dialog is not None and dialog.isVisible())
    dialog.layer_combo.setLayer(imagery)
    dialog.endpoint_radio.setChecked(True)
    dialog.endpoint_edit.setText(CONFIG["endpoint"])
    dialog.server_key_edit.setText(CONFIG.get("server_key", ""))
    dialog.client_key_widget.setFilePath(CONFIG.get("client_key", ""))
    dialog.patch_spin.setValue(CONFIG["patch"])
    dialog.stride_spin.setValue(CONFIG["stride"])
    dialog.output_widget.setFilePath(CONFIG["output"])
    dialog.polygons_check.setChecked(True)
    dialog.check_worker()
    RESULTS["check_answered"] = wait(lambda: dialog.last_check is not None, 30)
    RESULTS["check_message"] = dialog.last_check.message if dialog.last_check else None
    RESULTS["check_label"] = dialog.classes_label.text()
    dialog.adjustSize()
    wait(lambda: False, 0.5)
    dialog.grab().save(CONFIG["dialog_png"])
    dialog.button_box.button(QDialogButtonBox.StandardButton.Ok).click()
    RESULTS["dialog_error"] = dialog.error_label.text()
    if not plugin.runs:
        return
    run = plugin.runs[0]
    RESULTS["run_finished"] = wait(lambda: run not in plugin.runs, CONFIG["timeout_s"])
    RESULTS["run_error"] = run.error
    RESULTS["summary"] = run.results.get("SUMMARY")
    classes_layer, polygons = run.added_layers
    RESULTS["dialog_raster_style"] = describe_raster_style(classes_layer)
    RESULTS["dialog_vector_style"] = describe_vector_style(polygons)
    RESULTS["dialog_render"] = compare(CONFIG["output"], imagery, classes_layer)
    screenshot(iface, imagery, polygons)


def screenshot(iface, imagery, polygons) -> None:
    """The main window with the result over the imagery (polygons hidden: the class layer is what is judged)."""
    root = QgsProject.instance().layerTreeRoot()
    root.findLayer(polygons.id()).setItemVisibilityChecked(False)
    for node in root.findLayers():  # the class layer's legend open (names and colours), the others closed
        node.setExpanded(node.layer() is not None and node.layer().name().endswith("FactSeg classes"))
    iface.mainWindow().resize(1400, 900)
    canvas = iface.mapCanvas()
    canvas.setExtent(imagery.extent())
    canvas.refreshAllLayers()
    wait(lambda: False, 1.0)
    wait(lambda: not canvas.isDrawing(), 30)
    wait(lambda: False, 0.5)
    iface.mainWindow().grab().save(CONFIG["result_png"])


def processing_run(imagery) -> None:
    import processing

    before = set(QgsProject.instance().mapLayers())
    params = {"INPUT": imagery, "WORKER": CONFIG["endpoint"], "PATCH": CONFIG["patch"], "STRIDE": CONFIG["stride"],
              "OUTPUT": CONFIG["output2"], "OUTPUT_VECTOR": CONFIG["vector2"]}
    if CONFIG.get("server_key"):
        params.update(SERVER_KEY=CONFIG["server_key"], CLIENT_KEY=CONFIG["client_key"])
    processing.runAndLoadResults("factseg:segment", params)
    QCoreApplication.processEvents()
    added = [layer for key, layer in QgsProject.instance().mapLayers().items() if key not in before]
    rasters = [layer for layer in added if isinstance(layer, QgsRasterLayer)]
    vectors = [layer for layer in added if not isinstance(layer, QgsRasterLayer)]
    RESULTS["processing_raster_style"] = describe_raster_style(rasters[0]) if rasters else None
    RESULTS["processing_vector_style"] = describe_vector_style(vectors[0]) if vectors else None
    if rasters:
        RESULTS["processing_render"] = compare(CONFIG["output2"], imagery, rasters[0])


def main() -> None:
    try:
        from qgis.utils import plugins

        RESULTS["plugin_loaded"] = wait(lambda: "factseg" in plugins, 60)
        RESULTS["plugin_file"] = getattr(__import__("sys").modules.get("factseg"), "__file__", None)
        imagery = QgsRasterLayer(CONFIG["image"], "imagery")
        QgsProject.instance().addMapLayer(imagery)
        dialog_run(plugins["factseg"], imagery)
        processing_run(imagery)
    except Exception:  # noqa: BLE001 (reported to the test, which fails with it)
        RESULTS["exception"] = traceback.format_exc()
    finally:
        with open(CONFIG["results"], "w", encoding="utf-8") as handle:
            json.dump(RESULTS, handle)
        os._exit(0)


QTimer.singleShot(500, main)
