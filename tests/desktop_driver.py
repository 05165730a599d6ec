"""Runs inside the real QGIS desktop (``qgis --code``), driven by tests/test_plugin_desktop.py.

As an analyst would: the Segment Layer action opens the dialog on its first-run guide, a worker Python without torch
is caught before any run, Check worker lists the classes, Segment runs the job (a Processing task) against a real
worker and leaves its summary in the message bar; then the map is rendered by QGIS's own renderer and compared with
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
from qgis.PyQt.QtWidgets import QDialogButtonBox, QScrollArea

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
    outlines = [c.symbol().symbolLayer(0) for c in categories]
    return {"type": renderer.type(), "field": getattr(renderer, "classAttribute", str)(),
            "categories": [[int(c.value()), c.label(), list(c.symbol().color().getRgb()[:3])] for c in categories],
            "fill_alpha": [c.symbol().color().alpha() for c in categories],
            "outline_mm": [s.strokeWidth() for s in outlines],
            "outline_differs": [s.strokeColor().getRgb()[:3] != s.fillColor().getRgb()[:3] for s in outlines]}


def label_fits(label) -> dict:
    """A wrapped label's text, and whether its whole text is visible (its height holds every wrapped line)."""
    need = label.heightForWidth(label.width())
    parent = label.parentWidget()
    return {"text": label.text(), "visible": label.isVisible(), "height": label.height(), "needs": need,
            "inside_parent": parent is None or label.geometry().bottom() < parent.height(),
            "lines": round(need / max(1, label.fontMetrics().lineSpacing()))}


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


def first_run(dialog) -> None:
    """The guide on a fresh profile, its demo model link, and a worker Python without torch caught before a run."""
    guide = dialog.guide
    RESULTS["guide"] = label_fits(guide)
    RESULTS["setup_enabled_in_connect_mode"] = dialog.endpoint_radio.isChecked() and \
        dialog.python_panel.setup_button.isEnabled()
    guide.follow("factseg:demo")  # what clicking "use the demo model" does
    RESULTS["demo_link"] = {"local": dialog.local_radio.isChecked(), "model": dialog.model_widget.filePath()}
    dialog.python_panel.setFilePath(CONFIG.get("bare_python", "/usr/bin/python3"))  # a Python without torch
    RESULTS["python_checked"] = wait(lambda: dialog.python_panel.check is not None, 60)
    wait(lambda: False, 0.5)
    dialog.button_box.button(QDialogButtonBox.StandardButton.Ok).click()
    RESULTS["bare_python_status"] = label_fits(dialog.python_panel.status_label)
    RESULTS["bare_python_error"] = dialog.error_label.text()
    RESULTS["bare_python_refused"] = dialog.run is None and dialog.isVisible()
    dialog.grab().save(CONFIG["guide_png"])
    dialog.python_panel.setFilePath(CONFIG["python"])


def dialog_run(plugin, imagery) -> None:
    from qgis.utils import iface

    action = iface.mainWindow().findChild(QAction, "factsegSegmentLayer")
    RESULTS["action_found"] = action is not None
    action.trigger()
    dialog = plugin.dialog
    RESULTS["dialog_visible"] = bool(dialog is not None and dialog.isVisible())
    dialog.layer_combo.setLayer(imagery)
    first_run(dialog)
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
    dialog.error_label.clear()  # the refusal of the Python without torch, answered since: not in the screenshot
    dialog._fit_legend()  # noqa: SLF001 (what a resize does)
    dialog.adjustSize()
    wait(lambda: False, 0.5)
    RESULTS["legend_label"] = label_fits(dialog.classes_label)
    RESULTS["legend_bottom"] = dialog.classes_label.geometry().bottom()
    RESULTS["windows_top"] = dialog.patch_spin.parentWidget().geometry().top()
    dialog.findChild(QScrollArea).ensureWidgetVisible(dialog.classes_label, 0, 200)  # as the analyst scrolls to it
    wait(lambda: False, 0.3)
    RESULTS["dialog_size"] = [dialog.width(), dialog.height()]
    RESULTS["buttons_in_view"] = dialog.button_box.geometry().bottom() < dialog.height()
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
    RESULTS["dialog_layer_names"] = [classes_layer.name(), polygons.name()]
    RESULTS["dialog_raster_style"] = describe_raster_style(classes_layer)
    RESULTS["dialog_vector_style"] = describe_vector_style(polygons)
    RESULTS["dialog_render"] = compare(CONFIG["output"], imagery, classes_layer)
    RESULTS["polygon_change"] = outline_change(CONFIG["output"], imagery, classes_layer, polygons)
    screenshot(iface, imagery, polygons)
    item = iface.messageBar().currentItem()
    RESULTS["message_bar"] = {"is_summary": item is not None and item is run.summary_item,
                              "text": item.text() if item is not None else None,
                              "visible": bool(item is not None and item.isVisible())}


def outline_change(classes_path: str, imagery, classes_layer, polygons) -> float:
    """Mean change the polygons make to the map of the class layer, on the object pixels: outlined polygons
    differ from the raster they were made from (a fill in the raster's own colours would not)."""
    dataset = gdal.Open(classes_path)
    ids = dataset.GetRasterBand(1).ReadAsArray()
    height, width = ids.shape
    extent = imagery.extent()
    under = render([classes_layer, imagery], extent, width, height).astype(np.int16)
    over = render([polygons, classes_layer, imagery], extent, width, height).astype(np.int16)
    objects = (ids != 0) & (ids != 255)
    return float(np.abs(over - under).mean(axis=2)[objects].mean()) if objects.any() else 0.0


def screenshot(iface, imagery, polygons) -> None:
    """The main window with the result over the imagery: the class layer and its outlined polygons, the summary in
    the message bar."""
    root = QgsProject.instance().layerTreeRoot()
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
    RESULTS["processing_layer_names"] = sorted(layer.name() for layer in added)
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
