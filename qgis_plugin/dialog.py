"""The Segment Layer dialog (widgets built in code, no .ui file to compile).

It gathers the request (layer, extent, resolution, bands, worker and its keys, sliding-window sizes, outputs),
remembers the choices in QgsSettings and turns them into the parameters of ``factseg:segment``
(:meth:`SegmentDialog.build_parameters`): the dialog is a face for the Processing algorithm, which the plugin runs
as a Processing task (:class:`.task.SegmentRun`). The request is prepared when Segment is pressed, so a bad one is
explained in the dialog, which stays open. The dialog is modeless so that a rectangle can be drawn on the map.
"""
from __future__ import annotations

import html
from dataclasses import replace

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayerProxyModel,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.gui import (
    QgsAuthConfigSelect,
    QgsDoubleSpinBox,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsMapToolExtent,
    QgsRasterBandComboBox,
)
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .curve import resolve_keys
from .dialog_widgets import (
    Sections,
    chosen_extent,
    extent_text,
    fit_wrapped_labels,
    fitted_size,
    note_label,
    spin,
    wrap,
)
from .errors import FactSegError
from .first_run import FirstRunGuide
from .grid import native_resolution
from .mistakes import endpoint_problem, model_path_problem
from .model_resolution import native_value
from .raster_reading import ARGB_TYPES, default_bands
from .resolution_hint import ModelResolution
from .results_report import layer_notes
from .settings import DEVICES, EXTENT_SOURCES, RESOLUTION_UNITS, SCALING_LABELS, SCALING_MODES, PluginSettings
from .task import SegmentRun
from .worker_check import CheckWorkerTask, WorkerCheck, legend_html
from .worker_import import contract
from .worker_python_panel import WorkerPythonPanel

EXTENT_LABELS = ("Layer extent", "Map canvas extent", "Selected features of a polygon layer", "Drawn rectangle")
UNIT_LABELS = ("map units", "cm / pixel")
CHECK_TIMEOUT_S = 3.0


class SegmentDialog(QDialog):
    """Segment Layer: choose what to segment and how; ``request`` holds the job after OK."""

    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface is not None else None))
        self.iface = iface
        self.canvas = iface.mapCanvas() if iface is not None else None
        self.settings = PluginSettings.load()
        self.run: SegmentRun | None = None
        self.last_check: WorkerCheck | None = None
        self._check_task: CheckWorkerTask | None = None
        self._drawn: tuple[QgsRectangle, QgsCoordinateReferenceSystem] | None = None
        self._native_value: float | None = None
        self._previous_tool = None
        self._extent_tool = None
        self.setWindowTitle("FactSeg — Segment Layer")
        self._build()
        self._load_settings()
        self._layer_changed(self.layer_combo.currentLayer())
        self.model_resolution.watch_local(self.local_radio, self.python_widget, self.model_widget)

    # -- construction ---------------------------------------------------------------------------------------

    def _build(self) -> None:
        content = QWidget()  # scrolls when taller than the screen; the error line and the buttons stay in view
        sections = QVBoxLayout(content)
        sections.setContentsMargins(0, 0, 0, 0)
        self.guide = FirstRunGuide()
        self.guide.use_model.connect(self.use_local_model)
        sections.addWidget(self.guide)
        sections.addWidget(self._build_input())
        sections.addWidget(self._build_worker())
        sections.addWidget(self._build_output())
        layout = QVBoxLayout(self)
        layout.addWidget(Sections(content, self._fit_legend), 1)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b00020")
        layout.addWidget(self.error_label)
        self.button_box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.button_box.button(QDialogButtonBox.StandardButton.Ok).setText("Segment")
        self.button_box.accepted.connect(self.accept)
        self.button_box.rejected.connect(self.reject)
        layout.addWidget(self.button_box)

    def _build_input(self) -> QGroupBox:
        source = QGroupBox("Input")
        form = QFormLayout(source)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        form.addRow("Raster layer", self.layer_combo)
        self.extent_combo = QComboBox()
        self.extent_combo.addItems(EXTENT_LABELS)
        self.extent_combo.currentIndexChanged.connect(self._extent_source_changed)
        form.addRow("Extent", self.extent_combo)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        form.addRow("Polygon layer", self.polygon_combo)
        self.clip_check = QCheckBox("Only inside the selected polygons (pixels outside become nodata)")
        self.clip_check.setChecked(True)
        form.addRow("", self.clip_check)
        self.draw_button = QPushButton("Draw on map…")
        self.draw_button.clicked.connect(self._start_drawing)
        self.extent_label = QLabel()
        self.extent_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.draw_button)
        row.addWidget(self.extent_label, 1)
        form.addRow("", wrap(row))
        self.resolution_spin = QgsDoubleSpinBox()
        self.resolution_spin.setDecimals(9)
        self.resolution_spin.setRange(0.0, 1e9)
        self.units_combo = QComboBox()
        self.units_combo.addItems(UNIT_LABELS)
        self.units_combo.currentIndexChanged.connect(lambda _index: self._reset_resolution())
        self.native_button = QPushButton("Native")
        self.native_button.setToolTip("The layer's own pixel size")
        self.native_button.clicked.connect(self._reset_resolution)
        row = QHBoxLayout()
        row.addWidget(self.resolution_spin, 1)
        row.addWidget(self.units_combo)
        row.addWidget(self.native_button)
        form.addRow("Resolution", wrap(row))
        self.model_resolution = ModelResolution(self.resolution_spin, self.units_combo, self.layer_combo, row, form,
                                                lambda: self._native_value)
        self.band_combos = [QgsRasterBandComboBox() for _ in range(3)]
        row = QHBoxLayout()
        for label, combo in zip(("R", "G", "B"), self.band_combos):
            row.addWidget(QLabel(label))
            row.addWidget(combo, 1)
        form.addRow("Bands", wrap(row))
        self.layer_note = note_label()  # no georeferencing, one band: said in one line each
        form.addRow(self.layer_note)
        self.scaling_combo = QComboBox()
        self.scaling_combo.addItems(SCALING_LABELS)
        form.addRow("Scaling to 0–255", self.scaling_combo)
        return source

    def _build_worker(self) -> QGroupBox:
        worker = QGroupBox("Worker")
        form = QFormLayout(worker)
        self.endpoint_radio = QRadioButton("Connect to a running worker")
        self.local_radio = QRadioButton("Start a local worker")
        group = QButtonGroup(self)
        group.addButton(self.endpoint_radio)
        group.addButton(self.local_radio)
        self.endpoint_radio.toggled.connect(self._worker_mode_changed)
        self.endpoint_edit = QLineEdit()
        self.endpoint_edit.setPlaceholderText(contract.DEFAULT_ENDPOINT)
        form.addRow(self.endpoint_radio, self.endpoint_edit)
        self.server_key_edit = QLineEdit()
        self.server_key_edit.setPlaceholderText("remote worker: its server.key file or 40 z85 characters")
        self.client_key_widget = QgsFileWidget()
        self.client_key_widget.setFilter("CURVE secret keys (*.key_secret);;All files (*)")
        self.client_key_widget.setDialogTitle("This client's secret key (.key_secret)")
        self.authcfg_edit = QgsAuthConfigSelect()  # or: a QGIS authentication configuration holding both keys
        self.authcfg_edit.setToolTip("A QGIS authentication configuration holding the worker's public key and this "
                                     "client's key pair (Set up under Settings ▸ Options ▸ Authentication)")
        form.addRow(self.local_radio)
        self.python_panel = WorkerPythonPanel()
        self.python_widget = self.python_panel  # path, check and *Set up worker…* in one row
        form.addRow("Worker Python", self.python_panel)
        self.model_widget = QgsFileWidget()
        self.model_widget.setFilter("FactSeg models (*.pt *.pth *.onnx);;All files (*)")
        form.addRow("Model", self.model_widget)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        form.addRow("Device", self.device_combo)
        self.check_button = QPushButton("Check worker")
        self.check_button.clicked.connect(self.check_worker)
        form.addRow("Server key", self.server_key_edit)
        form.addRow("Client key", self.client_key_widget)
        form.addRow("Authentication", self.authcfg_edit)
        self.classes_label = QLabel()
        self.classes_label.setWordWrap(True)
        self.classes_label.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.check_button)
        form.addRow(self.classes_label)  # a row of its own, full width: the class legend wraps, never clips
        self.patch_spin = spin(0, contract.MAX_PATCH, f"Sliding-window size in pixels (model: the model's own; FactSeg: {contract.PATCH_SIZE})")
        self.stride_spin = spin(0, contract.MAX_PATCH, f"Step between windows in pixels (model: the model's own; FactSeg: {contract.STRIDE})")
        self.chunk_spin = spin(0, 65536, "Pixels per chunk side sent to the worker (worker: its default)")
        self.batch_spin = spin(0, 256, "Windows per forward pass of a local worker (0: its default)")
        row = QHBoxLayout()
        for label, box, special in (("Patch", self.patch_spin, "model"), ("Stride", self.stride_spin, "model"),
                                    ("Chunk", self.chunk_spin, "worker"), ("Batch", self.batch_spin, "default")):
            box.setSpecialValueText(special)
            row.addWidget(QLabel(label))
            row.addWidget(box)
        form.addRow("Windows", wrap(row))
        self.tta_check = QCheckBox("Flip test-time augmentation (slower, steadier)")
        form.addRow("", self.tta_check)
        return worker

    def _build_output(self) -> QGroupBox:
        output = QGroupBox("Output")
        form = QFormLayout(output)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output_widget.lineEdit().setPlaceholderText("[Save to temporary file]")
        form.addRow("Class raster", self.output_widget)
        self.polygons_check = QCheckBox("Add polygons (one per object, with class name and area)")
        self.confidence_check = QCheckBox("Write a confidence raster (probability of the chosen class)")
        self.statistics_check = QCheckBox("Report area and share of each class")
        form.addRow(self.polygons_check)
        form.addRow(self.confidence_check)
        form.addRow(self.statistics_check)
        return output

    def _load_settings(self) -> None:
        s = self.settings
        self.endpoint_edit.setText(s.endpoint)
        (self.local_radio if s.start_local else self.endpoint_radio).setChecked(True)
        self._worker_mode_changed()
        self.python_widget.setFilePath(s.worker_python)
        self.model_widget.setFilePath(s.model_path)
        self.device_combo.setCurrentIndex(DEVICES.index(s.device) if s.device in DEVICES else 0)
        self.patch_spin.setValue(s.patch)
        self.stride_spin.setValue(s.stride)
        self.batch_spin.setValue(s.batch_size)
        self.chunk_spin.setValue(s.chunk_size)
        self.tta_check.setChecked(s.tta)
        self.confidence_check.setChecked(s.confidence)
        self.server_key_edit.setText(s.server_key)
        self.client_key_widget.setFilePath(s.client_key)
        self.authcfg_edit.setConfigId(s.authcfg)
        self.units_combo.setCurrentIndex(RESOLUTION_UNITS.index(s.resolution_units)
                                         if s.resolution_units in RESOLUTION_UNITS else 0)
        self.scaling_combo.setCurrentIndex(SCALING_MODES.index(s.scaling) if s.scaling in SCALING_MODES else 0)
        self.extent_combo.setCurrentIndex(EXTENT_SOURCES.index(s.extent_source)
                                          if s.extent_source in EXTENT_SOURCES else 0)
        self._extent_source_changed()
        self.polygons_check.setChecked(s.add_polygons)
        self.statistics_check.setChecked(s.show_statistics)

    def current_settings(self) -> PluginSettings:
        """The dialog's choices as settings (saved when a job starts)."""
        return PluginSettings(
            endpoint=self.endpoint_edit.text().strip(),
            start_local=self.local_radio.isChecked(),
            worker_python=self.python_widget.filePath(),
            model_path=self.model_widget.filePath(),
            device=self.device_combo.currentText(),
            patch=self.patch_spin.value(),
            stride=self.stride_spin.value(),
            batch_size=self.batch_spin.value(),
            chunk_size=self.chunk_spin.value(),
            tta=self.tta_check.isChecked(),
            confidence=self.confidence_check.isChecked(),
            server_key=self.server_key_edit.text().strip(),
            client_key=self.client_key_widget.filePath().strip(),
            authcfg=(self.authcfg_edit.configId() or "").strip(),
            resolution_units=RESOLUTION_UNITS[self.units_combo.currentIndex()],
            scaling=SCALING_MODES[self.scaling_combo.currentIndex()],
            extent_source=EXTENT_SOURCES[self.extent_combo.currentIndex()],
            output_dir=self.settings.output_dir,
            add_polygons=self.polygons_check.isChecked(),
            show_statistics=self.statistics_check.isChecked(),
        )

    # -- reactions ------------------------------------------------------------------------------------------

    def _layer_changed(self, layer) -> None:
        raster = layer if isinstance(layer, QgsRasterLayer) else None
        for combo in self.band_combos:
            combo.setLayer(raster)
        argb = raster is not None and raster.dataProvider().dataType(1) in ARGB_TYPES
        if raster is not None and not argb:
            for combo, band in zip(self.band_combos, default_bands(raster)):
                combo.setBand(band)
        for combo in self.band_combos:
            combo.setEnabled(raster is not None and not argb)
        self.scaling_combo.setEnabled(not argb)
        self._reset_resolution()
        self._show_extent()
        notes = layer_notes(raster) if raster is not None else []
        self.layer_note.setText(" ".join(notes))
        self.layer_note.setVisible(bool(notes))

    def _extent_source_changed(self, *_args) -> None:
        source = EXTENT_SOURCES[self.extent_combo.currentIndex()]
        self.polygon_combo.setEnabled(source == "selection")
        self.clip_check.setEnabled(source == "selection")
        self.draw_button.setEnabled(source == "drawn" and self.canvas is not None)
        self._show_extent()

    def _worker_mode_changed(self, *_args) -> None:
        local = self.local_radio.isChecked()
        for widget in (self.endpoint_edit, self.check_button, self.server_key_edit, self.client_key_widget,
                       self.authcfg_edit):
            widget.setEnabled(not local)
        for widget in (self.python_panel.python_widget, self.model_widget, self.device_combo):
            widget.setEnabled(local)  # Set up worker… stays enabled: a newcomer starts in "connect" mode

    def _reset_resolution(self) -> None:
        """Show the layer's native pixel size in the chosen unit (ground cm/px measured at the layer's centre)."""
        self._native_value = None
        value = native_value(self.layer_combo.currentLayer(), RESOLUTION_UNITS[self.units_combo.currentIndex()])
        if value is not None:
            self.resolution_spin.setValue(value)
            self._native_value = self.resolution_spin.value()

    def _show_extent(self) -> None:
        try:
            extent = self.current_extent()
        except FactSegError as exc:
            self.extent_label.setText(str(exc))
            return
        if extent is None:
            layer = self.layer_combo.currentLayer()
            self.extent_label.setText(f"whole layer {layer.extent().toString(2)}" if layer else "")
        else:
            self.extent_label.setText(f"{extent[0].toString(2)} ({extent[1].authid()})")

    def _start_drawing(self) -> None:
        if self.canvas is None:
            return
        self._previous_tool = self.canvas.mapTool()
        self._extent_tool = QgsMapToolExtent(self.canvas)
        self._extent_tool.extentChanged.connect(self.set_drawn_extent)
        self.canvas.setMapTool(self._extent_tool)
        self.hide()

    def set_drawn_extent(self, rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem | None = None) -> None:
        """The rectangle drawn on the map (map canvas CRS unless given)."""
        if crs is None:
            crs = self.canvas.mapSettings().destinationCrs() if self.canvas else QgsCoordinateReferenceSystem()
        self._drawn = (QgsRectangle(rectangle), crs)
        if self.canvas is not None and self._extent_tool is not None:
            self.canvas.unsetMapTool(self._extent_tool)
            if self._previous_tool is not None:
                self.canvas.setMapTool(self._previous_tool)
        self.extent_combo.setCurrentIndex(EXTENT_SOURCES.index("drawn"))
        self._show_extent()
        self.show()
        self.raise_()

    def check_worker(self) -> CheckWorkerTask | None:
        """Ask the endpoint for its model and classes in a task (off the GUI thread); :meth:`show_check` shows
        them when it answers (the worker decides names and colours) or says in words why it does not."""
        endpoint = self.endpoint_edit.text().strip()
        s = self.current_settings()
        try:
            if endpoint_problem(endpoint):
                raise FactSegError(endpoint_problem(endpoint))
            keys = resolve_keys(s.server_key, s.client_key, s.authcfg)
        except FactSegError as exc:
            self.classes_label.setText(html.escape(str(exc)))
            return None
        task = CheckWorkerTask(endpoint, keys, CHECK_TIMEOUT_S)
        task.checked.connect(self.show_check)
        self._check_task = task  # a Python reference keeps the task alive while it runs
        self.check_button.setEnabled(False)
        self.classes_label.setText(html.escape(f"Checking {endpoint} …"))
        QgsApplication.taskManager().addTask(task)
        return task

    def show_check(self, check: WorkerCheck) -> None:
        """Main thread: show what *Check worker* found."""
        self.check_button.setEnabled(not self.local_radio.isChecked())
        self.last_check = check
        if not check.ok:
            self.classes_label.setText(html.escape(f"No FactSeg worker answers at {check.endpoint!r}: {check.message}"))
            return
        self.model_resolution.set_info(check.info)  # its model card's gsd_m: shown, and the default resolution
        self.classes_label.setText(legend_html(check))
        self._fit_legend()

    def _fit_legend(self) -> None:
        """Give every wrapped label (class legend, guide, worker Python status) the height its text needs at its
        width, so that none is clipped or overlaps the next row."""
        fit_wrapped_labels(self)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        self._fit_legend()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """Tall enough for every section, but no taller than the screen (the sections scroll)."""
        return fitted_size(super().sizeHint(), self)

    # -- the request ----------------------------------------------------------------------------------------

    def current_extent(self) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem] | None:
        """The chosen extent and its CRS; None for the whole layer."""
        return chosen_extent(EXTENT_SOURCES[self.extent_combo.currentIndex()], self.canvas,
                             self.polygon_combo.currentLayer(), self._drawn)

    def build_parameters(self) -> dict:
        """The dialog's choices as ``factseg:segment`` parameters (raises FactSegError in plain words)."""
        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            raise FactSegError("Choose a raster layer to segment.")
        s = self.current_settings()
        params: dict = {"INPUT": layer, "PATCH": s.patch, "STRIDE": s.stride, "CHUNK_SIZE": s.chunk_size,
                        "TTA": s.tta, "SCALING": SCALING_MODES.index(s.scaling),
                        "RESOLUTION_UNITS": RESOLUTION_UNITS.index(s.resolution_units)}
        if s.start_local:
            params.update(MODEL=s.model_path, WORKER_PYTHON=s.worker_python, DEVICE=DEVICES.index(s.device),
                          BATCH_SIZE=s.batch_size)
            if model_path_problem(s.model_path):
                raise FactSegError(model_path_problem(s.model_path))
        else:
            if endpoint_problem(s.endpoint):
                raise FactSegError(endpoint_problem(s.endpoint))
            params.update(WORKER=s.endpoint, SERVER_KEY=s.server_key, CLIENT_KEY=s.client_key, AUTHCFG=s.authcfg)
        extent = self.current_extent()
        if extent is not None:
            params["EXTENT"] = extent_text(*extent)
        resolution, params["RESOLUTION_UNITS"] = self.model_resolution.parameter(self._native_value,
                                                                                 params["RESOLUTION_UNITS"])
        if resolution <= 0 and native_resolution(layer) is None:
            raise FactSegError(f"Layer {layer.name()!r} has no native pixel size: set the resolution.")
        params["RESOLUTION"] = resolution
        output = self.output_widget.filePath().strip() or QgsProcessingUtils.generateTempFilename("factseg.tif")
        params["OUTPUT"] = output
        stem = output.rsplit(".", 1)[0]
        if s.add_polygons:
            params["OUTPUT_VECTOR"] = stem + "_objects.gpkg"
        if s.confidence:
            params["OUTPUT_CONFIDENCE"] = stem + "_confidence.tif"
        if layer.dataProvider().dataType(1) not in ARGB_TYPES:
            params["BANDS"] = ",".join(str(max(1, combo.currentBand())) for combo in self.band_combos)
        if s.extent_source == "selection" and self.clip_check.isChecked():
            params["MASK"] = QgsProcessingFeatureSourceDefinition(self.polygon_combo.currentLayer().id(), True)
        return params

    @property
    def request(self):
        """The prepared job of the run the dialog holds (None before Segment was pressed successfully)."""
        return self.run.request if self.run is not None else None

    def use_local_model(self, path: str) -> None:
        """Start a local worker with ``path`` (the guide's demo model)."""
        self.local_radio.setChecked(True)
        self.model_widget.setFilePath(path)

    def accept(self) -> None:
        """Prepare the run (errors stay in the dialog); the plugin starts it once the dialog closes."""
        try:
            parameters = self.build_parameters()
            if self.local_radio.isChecked():
                self.python_panel.require_usable()  # checked in the background since the dialog opened
            run = SegmentRun(parameters, self.iface.messageBar() if self.iface else None,
                             layer_name=self.layer_combo.currentLayer().name())
            if run.prepare_error is not None:
                raise FactSegError(run.prepare_error)
        except FactSegError as exc:
            self.error_label.setText(str(exc))
            self._fit_legend()
            return
        self.run = run
        self.error_label.clear()
        self.settings = self.current_settings()
        remembered = PluginSettings.load().model_path  # a model becomes the default once a run with it succeeded
        replace(self.settings, model_path=remembered).save()
        super().accept()
