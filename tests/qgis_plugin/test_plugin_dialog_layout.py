"""The Segment Layer dialog's layout in a real (offscreen) QGIS: no Qt warning about negative sizes while it opens and
resizes, it opens no taller than the screen (its sections scroll), the wrapped class legend sits above the
"Windows" row at any width, the first-run guide is there on a
fresh profile and its demo-model link starts a local worker with that model, and a layer without georeferencing
or with one band is said so in one line under the bands."""
from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, qInstallMessageHandler
from qgis.PyQt.QtGui import QGuiApplication

pytestmark = pytest.mark.qgis


@pytest.fixture()
def qt_messages():
    seen: list[str] = []
    previous = qInstallMessageHandler(lambda _kind, _context, message: seen.append(message))
    yield seen
    qInstallMessageHandler(previous)


def settle(dialog) -> None:
    for _ in range(5):
        QCoreApplication.processEvents()


def worker_check():
    from factseg_core.classes import ISAID_CLASSES, classes_to_dicts
    from qgis_plugin.worker_check import WorkerCheck

    classes = classes_to_dicts(ISAID_CLASSES)
    return WorkerCheck("tcp://127.0.0.1:5555", ok=True, classes=classes, device="cpu",
                       info={"model": "FactSeg", "backbone": "resnet50", "classes": classes})


@pytest.mark.parametrize("width", [520, 760, 1100])
def test_no_negative_sizes_and_the_legend_stays_above_the_windows_row(qgis_iface, qt_messages, width):
    from qgis_plugin.dialog import SegmentDialog

    dialog = SegmentDialog(qgis_iface)
    dialog.show()
    settle(dialog)
    screen = QGuiApplication.primaryScreen().availableGeometry()  # the dialog scrolls, its buttons stay in reach
    assert dialog.height() <= screen.height() and dialog.button_box.geometry().bottom() < dialog.height()
    dialog.show_check(worker_check())
    dialog.resize(width, dialog.height())
    settle(dialog)
    assert not [m for m in qt_messages if "Negative sizes" in m], qt_messages
    legend = dialog.classes_label
    assert legend.height() >= legend.heightForWidth(legend.width()) > 2 * legend.fontMetrics().height()
    windows_row = dialog.patch_spin.parentWidget()
    assert legend.geometry().bottom() < windows_row.geometry().top(), (legend.geometry(), windows_row.geometry())
    dialog.close()


def test_first_run_guide_and_its_demo_model(qgis_iface, tiny_checkpoint, monkeypatch):
    from qgis.core import QgsSettings

    from qgis_plugin.dialog import SegmentDialog
    from qgis_plugin.first_run import HIDDEN_KEY, WEIGHTS_URL

    QgsSettings().remove(HIDDEN_KEY)
    monkeypatch.setenv("FACTSEG_DEMO_MODEL", str(tiny_checkpoint))
    dialog = SegmentDialog(qgis_iface)
    dialog.show()
    settle(dialog)
    guide = dialog.guide
    assert guide.isVisible() and WEIGHTS_URL in guide.text() and "Set up worker…" in guide.text()
    assert dialog.endpoint_radio.isChecked() and dialog.python_panel.setup_button.isEnabled()
    guide.follow("factseg:demo")
    assert dialog.local_radio.isChecked() and dialog.model_widget.filePath() == str(tiny_checkpoint)
    guide.follow("factseg:hide")
    assert not guide.isVisible()
    dialog.close()
    again = SegmentDialog(qgis_iface)
    assert not again.guide.isVisibleTo(again)  # hidden for good
    again.close()
    QgsSettings().remove(HIDDEN_KEY)


def test_layer_notes_for_no_georeferencing_and_one_band(qgis_iface, tmp_path):
    from qgis_plugin.dialog import SegmentDialog

    memory = gdal.GetDriverByName("MEM").Create("", 40, 30, 1, gdal.GDT_Byte)
    memory.GetRasterBand(1).WriteArray(np.arange(1200, dtype=np.uint8).reshape(30, 40))
    gdal.GetDriverByName("PNG").CreateCopy(str(tmp_path / "scan.png"), memory)
    layer = QgsRasterLayer(str(tmp_path / "scan.png"), "scan")
    QgsProject.instance().addMapLayer(layer)
    dialog = SegmentDialog(qgis_iface)
    dialog.layer_combo.setLayer(layer)
    text = dialog.layer_note.text()
    assert "no georeferencing: areas are in pixels" in text and "band 1 is used for red, green and blue" in text
    assert dialog.layer_note.isVisibleTo(dialog)
    dialog.close()
    QgsProject.instance().removeAllMapLayers()
