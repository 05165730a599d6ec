"""What a run tells the analyst, with real QGIS and a real worker: a picture without georeferencing is named as
such in the log and its areas are counted in pixels; a one-band layer is said to feed red, green and blue; the
per-class table is in the Processing log; toolbox layers are named after the input and their legend lists only
the classes found; the dialog's run leaves its summary in the message bar with a Details table."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from osgeo import gdal
from plugin_support import PATCH, STRIDE, UTM_GT, recording_feedback, scene, write_geotiff
from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication

pytestmark = pytest.mark.qgis
LogFeedback = recording_feedback()



def png_without_georeferencing(path, bands: int = 3):
    data = scene(96, 128, bands=bands, seed=3).astype(np.uint8)
    memory = gdal.GetDriverByName("MEM").Create("", 128, 96, bands, gdal.GDT_Byte)
    for b in range(bands):
        memory.GetRasterBand(b + 1).WriteArray(data[b])
    gdal.GetDriverByName("PNG").CreateCopy(str(path), memory)
    return path


@pytest.mark.parametrize("bands", [3, 1])
def test_a_picture_without_georeferencing_is_named_and_counted_in_pixels(plugin, worker, tmp_path, bands):
    import processing

    picture = png_without_georeferencing(tmp_path / "photo.png", bands)
    feedback = LogFeedback()
    result = processing.run("factseg:segment", {"INPUT": str(picture), "WORKER": worker.endpoint, "PATCH": PATCH,
                                                "STRIDE": STRIDE, "OUTPUT": str(tmp_path / "classes.tif")},
                            feedback=feedback)
    notes = [line for line in feedback.lines if "no georeferencing" in line]
    assert notes and "'photo'" in notes[0] and "areas are in pixels" in notes[0]
    assert "\n" not in notes[0]
    summary = result["SUMMARY"]
    assert "areas in pixels" in summary and " px)" in summary
    assert not re.search(r"\d (m²|ha|km²)", summary), summary
    one_band = [line for line in feedback.lines if "band 1 is used for red, green and blue" in line]
    assert bool(one_band) is (bands == 1)


def test_toolbox_layers_are_named_after_the_input_and_list_the_classes_found(plugin, worker, tmp_path):
    import processing

    source = write_geotiff(tmp_path / "harbour.tif", scene(128, 160, seed=5), UTM_GT, 32633)
    feedback = LogFeedback()
    before = set(QgsProject.instance().mapLayers())
    result = processing.runAndLoadResults(
        "factseg:segment", {"INPUT": str(source), "WORKER": worker.endpoint, "PATCH": PATCH, "STRIDE": STRIDE,
                            "OUTPUT": str(tmp_path / "classes.tif"), "OUTPUT_VECTOR": str(tmp_path / "objects.gpkg")},
        feedback=feedback)
    QCoreApplication.processEvents()
    added = [layer for key, layer in QgsProject.instance().mapLayers().items() if key not in before]
    names = sorted(layer.name() for layer in added)
    assert names == ["harbour — FactSeg classes", "harbour — FactSeg objects"], names
    present = {s["id"] for s in json.loads(result["STATISTICS"]) if s["pixels"] > 0}
    found = present - {0}
    assert 0 < len(found) < 15  # the tiny model finds some classes, not all: the legend must say which
    raster = next(layer for layer in added if isinstance(layer, QgsRasterLayer))
    assert {c.value for c in raster.renderer().classes()} == found
    vector = next(layer for layer in added if not isinstance(layer, QgsRasterLayer))
    assert {int(c.value()) for c in vector.renderer().categories()} == found
    table = feedback.lines[feedback.lines.index("Classes found:") + 1:]
    assert table[0].split() == ["class", "share", "area"]
    assert len([line for line in table if line.endswith(("m²", "ha", "km²"))]) == len(present)


def test_dialog_run_leaves_its_summary_with_a_details_table(plugin, worker, tmp_path, qgis_iface):
    from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

    source = write_geotiff(tmp_path / "in.tif", scene(96, 96, seed=2), UTM_GT, 32633)
    layer = QgsRasterLayer(str(source), "quay")
    QgsProject.instance().addMapLayer(layer)
    run = plugin.start_run({"INPUT": layer, "WORKER": worker.endpoint, "PATCH": PATCH, "STRIDE": STRIDE,
                            "OUTPUT": str(tmp_path / "classes.tif")}, layer_name="quay")
    deadline = time.monotonic() + 120
    while run in plugin.runs:
        assert time.monotonic() < deadline
        QCoreApplication.processEvents()
        time.sleep(0.01)
    assert run.error is None
    item = run.summary_item
    assert item is not None and item in qgis_iface.messageBar().items()
    assert item.title() == "FactSeg finished" and item.duration() == 0
    assert item.text().startswith(run.results["SUMMARY"].split(". ")[0] + ". Found: ")
    button = item.findChild(QPushButton, "factsegSummaryDetails")
    button.click()
    box = item.findChild(QMessageBox, "factsegSummaryTable") or getattr(item, "details_box", None)
    assert box is not None and box.isVisible()
    present = [s for s in json.loads(run.results["STATISTICS"]) if s["pixels"] > 0]
    assert box.text().count("<tr>") == len(present) + 1  # header + one row per class found
    box.close()
