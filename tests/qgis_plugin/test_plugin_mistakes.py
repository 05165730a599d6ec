"""A newcomer's mistakes, each answered in one sentence that says what to do — never a traceback — in the message
bar (the dialog's run), in Processing's log (the toolbox) and in the dialog itself; with real QGIS, real worker
processes (a local worker started with a Python that has no torch, or with a file that is no model) and a real
second run racing the first for the same output."""
from __future__ import annotations

import threading
import time

import pytest
from plugin_support import UTM_GT, recording_feedback, scene, wait_for_run, write_geotiff
from qgis.core import Qgis, QgsProject, QgsRasterLayer, QgsTask
from qgis.PyQt.QtCore import QCoreApplication

pytestmark = pytest.mark.qgis
BARE_PYTHON = "/usr/bin/python3"  # Debian's Python: no torch here (the worker Python is the project's .venv)


def one_sentence(text: str | None) -> str:
    assert text, "no message"
    assert "Traceback" not in text and 'File "' not in text and "\n" not in text, text
    assert "weights_only" not in text and len(text) < 400, text
    assert not text[0].islower() and text.rstrip().endswith("."), text
    return text


@pytest.fixture()
def layer(tmp_path):
    src = write_geotiff(tmp_path / "in.tif", scene(64, 96, seed=7), UTM_GT, 32633)
    loaded = QgsRasterLayer(str(src), "scene")
    QgsProject.instance().addMapLayer(loaded)
    return loaded


@pytest.fixture(scope="module")
def not_models(tmp_path_factory):
    """A folder holding a model, a pickled torch module (torch.load suggests weights_only=False), and junk bytes."""
    import torch

    root = tmp_path_factory.mktemp("not_models")
    (root / "folder").mkdir()
    (root / "folder" / "final.pt").write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2), root / "module.pt")
    (root / "junk.pth").write_bytes(b"this is not a model at all\n" * 40)
    return root


def mistakes(tiny_checkpoint, not_models, python):
    return {
        "no scheme": {"WORKER": "127.0.0.1:5599"},
        "http": {"WORKER": "http://127.0.0.1:5599"},
        "no torch": {"MODEL": str(tiny_checkpoint), "WORKER_PYTHON": BARE_PYTHON},
        "folder": {"MODEL": str(not_models / "folder"), "WORKER_PYTHON": python},
        "pickled module": {"MODEL": str(not_models / "module.pt"), "WORKER_PYTHON": python},
        "junk": {"MODEL": str(not_models / "junk.pth"), "WORKER_PYTHON": python},
    }


EXPECTED = {"no scheme": "tcp://127.0.0.1:5599", "http": "not HTTP", "no torch": "has no torch",
            "folder": "is a folder", "pickled module": "is not a FactSeg model file",
            "junk": "is not a FactSeg model file"}


@pytest.mark.parametrize("mistake", list(EXPECTED))
def test_each_mistake_is_one_sentence_in_the_message_bar(mistake, plugin, layer, tiny_checkpoint, not_models,
                                                         tmp_path, qgis_iface):
    from plugin_support import VENV_PYTHON

    from qgis_plugin.errors import FactSegError
    from qgis_plugin.task import SegmentRun

    qgis_iface.messageBar().clear_messages()
    params = {"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"), "PATCH": 64, "STRIDE": 32,
              **mistakes(tiny_checkpoint, not_models, str(VENV_PYTHON))[mistake]}
    run = SegmentRun(params, qgis_iface.messageBar(), layer_name="scene")
    if run.prepare_error is not None:  # refused before anything runs: the dialog shows it in its error line
        message = run.prepare_error
        with pytest.raises(FactSegError):
            plugin.start(run)
    else:
        plugin.start(run)
        wait_for_run(run, 180.0)
        assert run.status() == QgsTask.TaskStatus.Terminated
        message = run.error
        assert qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)[-1].endswith(message)
    assert EXPECTED[mistake] in one_sentence(message)
    assert not (tmp_path / "classes.tif").exists() and not list(tmp_path.glob(".classes*"))


@pytest.mark.parametrize("mistake", ["no scheme", "http", "no torch", "pickled module"])
def test_each_mistake_is_one_sentence_in_the_processing_log(mistake, plugin, layer, tiny_checkpoint, not_models,
                                                            tmp_path):
    import processing
    from plugin_support import VENV_PYTHON
    from qgis.core import QgsProcessingException

    feedback = recording_feedback()()
    params = {"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"), "PATCH": 64, "STRIDE": 32,
              **mistakes(tiny_checkpoint, not_models, str(VENV_PYTHON))[mistake]}
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("factseg:segment", params, feedback=feedback)
    generic = "There were errors executing the algorithm."
    said = [one_sentence(e) for e in [*feedback.errors, str(raised.value)] if e != generic]
    assert said and EXPECTED[mistake] in said[0], (said, feedback.errors)


def test_dialog_says_each_mistake_in_its_error_line(qgis_iface, layer, tiny_checkpoint, not_models):
    from qgis_plugin.dialog import SegmentDialog

    dialog = SegmentDialog(qgis_iface)
    dialog.layer_combo.setLayer(layer)
    dialog.extent_combo.setCurrentIndex(0)
    for endpoint, expected in (("127.0.0.1:5599", "tcp://127.0.0.1:5599"), ("http://127.0.0.1:5599", "not HTTP")):
        dialog.endpoint_radio.setChecked(True)
        dialog.endpoint_edit.setText(endpoint)
        dialog.accept()
        assert dialog.run is None and expected in one_sentence(dialog.error_label.text())
        dialog.check_worker()  # Check worker says the same at once, without asking anyone
        assert expected in dialog.classes_label.text()
    dialog.local_radio.setChecked(True)
    for model in (not_models / "folder", not_models / "nothing-here.pt"):
        dialog.model_widget.setFilePath(str(model))
        dialog.accept()
        assert dialog.run is None and str(model) in one_sentence(dialog.error_label.text())
    dialog.close()


def test_a_failed_model_is_not_remembered(plugin, qgis_iface, layer, tiny_checkpoint, not_models, tmp_path):
    """The dialog keeps the last model that worked as its default, not the last one tried."""
    from plugin_support import VENV_PYTHON

    from qgis_plugin.dialog import SegmentDialog
    from qgis_plugin.settings import PluginSettings

    PluginSettings(model_path=str(tiny_checkpoint), start_local=True, worker_python=str(VENV_PYTHON)).save()
    dialog = SegmentDialog(qgis_iface)
    dialog.layer_combo.setLayer(layer)
    dialog.extent_combo.setCurrentIndex(0)
    dialog.output_widget.setFilePath(str(tmp_path / "classes.tif"))
    deadline = time.monotonic() + 120
    while dialog.python_panel.check is None:  # checked in the background as soon as the dialog opened
        assert time.monotonic() < deadline
        QCoreApplication.processEvents()
        time.sleep(0.02)
    assert dialog.python_panel.check.ok, dialog.python_panel.status_label.text()
    dialog.model_widget.setFilePath(str(not_models / "junk.pth"))
    dialog.accept()
    if dialog.run is None:  # the dialog read the model's card first and refused it there, in one sentence
        assert "is not a FactSeg model file" in one_sentence(dialog.error_label.text())
    else:
        run = plugin.start(dialog.run)
        wait_for_run(run, 180.0)
        assert "is not a FactSeg model file" in one_sentence(run.error)
    assert PluginSettings.load().model_path == str(tiny_checkpoint)
    dialog.close()
    PluginSettings().save()


def test_two_runs_writing_one_output(plugin, worker, layer, tmp_path, monkeypatch):
    """The second run is refused in one sentence while the first writes; the first completes untouched."""
    from qgis_plugin.raster_reading import RasterReader

    reads, gate = [], threading.Event()
    read = RasterReader.read

    def gated_read(self, *window):  # the first run waits inside its job until the second one has ended
        reads.append(window)
        gate.wait(60)
        return read(self, *window)

    monkeypatch.setattr(RasterReader, "read", gated_read)
    params = {"INPUT": layer, "OUTPUT": str(tmp_path / "same.tif"), "WORKER": worker.endpoint, "PATCH": 64,
              "STRIDE": 32}
    first = plugin.start_run(dict(params), layer_name="scene")
    deadline = time.monotonic() + 60
    while not reads:
        assert time.monotonic() < deadline
        QCoreApplication.processEvents()
        time.sleep(0.01)
    second = plugin.start_run(dict(params), layer_name="scene")
    wait_for_run(second, 180.0)
    gate.set()
    wait_for_run(first, 180.0)
    assert "Another FactSeg run is writing" in one_sentence(second.error)
    assert first.error is None and (tmp_path / "same.tif").is_file()
