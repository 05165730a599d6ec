"""The Segment Layer dialog's model resolution: a *Model* button beside *Native*, a line under the Resolution row
with the layer's and the model's ground resolution, and the warning when the chosen pixels are far from the
model's (see :mod:`.model_resolution`).

Kept apart from :mod:`.dialog` so the dialog only wires it: it listens to the resolution widgets itself. The
model's ``gsd_m`` comes from *Check worker* (the worker's ``info`` carries the model card); once known, the
resolution defaults to it. Until then the dialog shows the layer's, and a run left at it lets ``factseg:segment``
take the model's own where its card has one (RESOLUTION 0).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton

from .grid import native_resolution
from .model_card_reader import ReadCardTask
from .model_resolution import card_gsd, degrade_note, layer_gsd, layer_metres_per_unit
from .settings import RESOLUTION_UNITS

MAP_UNITS = RESOLUTION_UNITS.index("map_units")


class ModelResolution:
    """Adds the *Model* button to ``row`` and the note to ``form``; ``native()`` is the dialog's native value."""

    def __init__(self, spin, units_combo, layer_combo, row: QHBoxLayout, form: QFormLayout,
                 native: Callable[[], float | None]) -> None:
        self.spin, self.units_combo, self.layer_combo, self.native = spin, units_combo, layer_combo, native
        self.model_gsd: float | None = None
        self.unknown = "not known yet (Check worker)"
        self._local: tuple | None = None
        self.task: ReadCardTask | None = None
        self.button = QPushButton("Model")
        self.button.setToolTip("The ground resolution the model was trained at (its model card; Check worker)")
        self.button.setEnabled(False)
        self.button.clicked.connect(self.use_model)
        row.addWidget(self.button)
        self.note = QLabel()
        self.note.setWordWrap(True)
        form.addRow("", self.note)
        # connected after the dialog's own slots: the dialog shows the native value first, then the model's wins
        units_combo.currentIndexChanged.connect(self.apply_default)
        layer_combo.layerChanged.connect(self.apply_default)
        spin.valueChanged.connect(self.refresh)

    def set_info(self, info: dict | None) -> None:
        """A worker's ``info`` (None: forget the model): its card's ``gsd_m`` becomes the default resolution."""
        previous = self.model_value()
        self.model_gsd = card_gsd(info)
        if info is not None and self.model_gsd is None:
            self.unknown = "not known (its model card gives no gsd_m)"
        native = self.native()
        if self.model_gsd is None and previous is not None and native is not None \
                and math.isclose(self.spin.value(), previous, rel_tol=1e-6):
            self.spin.setValue(native)  # the value was the former model's: back to the layer's own
        self.button.setEnabled(self.model_gsd is not None)
        self.apply_default()

    def watch_local(self, local_radio, python_widget, model_widget) -> ReadCardTask | None:
        """A local worker's model: its card is read in the worker Python (a task) now and whenever it changes."""
        self._local = (local_radio, python_widget, model_widget)
        local_radio.toggled.connect(self.read_local)
        model_widget.fileChanged.connect(self.read_local)
        return self.read_local()

    def read_local(self, *_args) -> ReadCardTask | None:
        """Start reading the local model's card (off the GUI thread); forget the model's resolution meanwhile."""
        radio, python, model = self._local  # type: ignore[misc]
        path = model.filePath().strip()
        if not radio.isChecked() or not path or not Path(path).is_file():
            self.unknown = "not known yet (Check worker)" if not radio.isChecked() else "no model file chosen"
            self.set_info(None)
            return None
        self.unknown = "reading the model's card…"
        self.set_info(None)
        task = ReadCardTask(python.filePath(), path)
        task.read.connect(lambda card, message: self._local_read(card, message, path))
        self.task = task  # a Python reference keeps the task alive while it runs
        QgsApplication.taskManager().addTask(task)
        return task

    def _local_read(self, card: dict | None, message: str, path: str) -> None:
        radio, _python, model = self._local  # type: ignore[misc]
        try:
            if not radio.isChecked() or model.filePath().strip() != path:
                return  # the choice changed meanwhile: a newer read is on its way
        except RuntimeError:
            return  # the dialog was closed (its widgets deleted) while the card was read
        self.unknown = f"not known ({message.rstrip('.')})"
        self.set_info({"model_card": card} if card else None)

    def apply_default(self, *_args) -> None:
        """The model's resolution when it is known, else the value the dialog already shows (the layer's)."""
        if self.model_gsd is not None:
            self.use_model()
        else:
            self.refresh()

    def use_model(self) -> None:
        value = self.model_value()
        if value is not None:
            self.spin.setValue(value)
        self.refresh()

    def _in_units(self, metres: float | None) -> float | None:
        if metres is None:
            return None
        if RESOLUTION_UNITS[self.units_combo.currentIndex()] == "cm_per_px":
            return metres * 100.0
        per_unit = layer_metres_per_unit(self.layer_combo.currentLayer())
        return metres / per_unit if per_unit else None

    def model_value(self) -> float | None:
        """The model's ``gsd_m`` in the dialog's current unit."""
        return self._in_units(self.model_gsd)

    def chosen_gsd(self) -> float | None:
        """Ground metres per pixel of the value in the resolution box."""
        value = self.spin.value()
        if value <= 0:
            return None
        if RESOLUTION_UNITS[self.units_combo.currentIndex()] == "cm_per_px":
            return value / 100.0
        per_unit = layer_metres_per_unit(self.layer_combo.currentLayer())
        return value * per_unit if per_unit else None

    def refresh(self, *_args) -> None:
        """The note: both resolutions, and one line saying results will degrade when the pixels are far off."""
        layer = self.layer_combo.currentLayer()
        own = layer_gsd(layer, QgsProject.instance().transformContext()) if isinstance(layer, QgsRasterLayer) \
            else None
        layer_part = f"Layer: {own:.3g} m/px" if own else "Layer: no native resolution"
        if self.model_gsd is None:
            self.note.setText(f"{layer_part} · model: {self.unknown}; a run left at the layer's resolution uses the "
                              "model's own where its card gives one.")
            return
        text = f"{layer_part} · model: {self.model_gsd:.3g} m/px (its model card)."
        warning = degrade_note(self.model_gsd, self.chosen_gsd())
        self.note.setText(f"{text}\n{warning}" if warning else text)

    def parameter(self, native_value: float | None, units_index: int) -> tuple[float, int]:
        """(RESOLUTION, RESOLUTION_UNITS) for ``factseg:segment``: 0 for the model's (else native) resolution,
        the layer's own pixel in map units when it is kept against a known model resolution, else the value."""
        value = self.spin.value()
        model_value = self.model_value()
        if model_value is not None and math.isclose(value, model_value, rel_tol=1e-6):
            return 0.0, units_index
        if native_value is not None and value == native_value:
            layer = self.layer_combo.currentLayer()
            native = native_resolution(layer) if isinstance(layer, QgsRasterLayer) else None
            if self.model_gsd is not None and native is not None:
                return native[0], MAP_UNITS  # the layer's grid exactly, chosen knowingly
            return 0.0, units_index
        return value, units_index
