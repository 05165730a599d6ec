"""The Segment Layer job as a QgsTask: runs in QGIS's task manager, never freezes the map.

``run`` (task thread) reads pixels and talks to the worker; ``finished`` (main thread) adds the styled class
layer and the polygons to the project and reports per-class areas, or reports the error in plain words in the
message bar and the log. Cancelling the task tells the worker to stop and leaves no file under the output name.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable

from qgis.core import Qgis, QgsMessageLog, QgsProject, QgsRasterLayer, QgsTask, QgsVectorLayer

from .errors import FactSegError, JobCancelled
from .job import JobRequest, JobResult, format_statistics, run_job
from .styling import style_class_layer

LOG_TAG = "FactSeg"


def log(message: str, level: Qgis.MessageLevel = Qgis.Info) -> None:
    """Write to the FactSeg tab of QGIS's log panel."""
    QgsMessageLog.logMessage(message, LOG_TAG, level)


class SegmentTask(QgsTask):
    """Runs one :class:`JobRequest`; ``result``/``error`` hold the outcome once ``finished`` ran."""

    def __init__(
        self,
        request: JobRequest,
        message_bar=None,
        project: QgsProject | None = None,
        on_finished: Callable[[SegmentTask], None] | None = None,
    ) -> None:
        super().__init__(f"FactSeg: segment {request.layer_name or 'layer'}", QgsTask.CanCancel)
        self.request = request
        self.message_bar = message_bar
        self.project = project or QgsProject.instance()
        self.on_finished = on_finished
        self.result: JobResult | None = None
        self.error: FactSegError | None = None
        self.added_layers: list = []

    def run(self) -> bool:
        """Task thread: the whole job; exceptions are kept for ``finished`` (raising here would lose them)."""
        try:
            self.result = run_job(
                self.request,
                progress=lambda fraction: self.setProgress(100.0 * fraction),
                is_cancelled=self.isCanceled,
                log=log,
            )
            return True
        except JobCancelled as exc:
            self.error = exc
        except FactSegError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 (anything else: report it, with the traceback in the log)
            log(traceback.format_exc(), Qgis.Critical)
            self.error = FactSegError(f"Unexpected error while segmenting: {exc}")
        return False

    def finished(self, ok: bool) -> None:
        """Main thread: add and style the outputs, or report what went wrong."""
        try:
            if ok and self.result is not None:
                self._add_outputs(self.result)
            elif isinstance(self.error, JobCancelled) or (self.error is None and self.isCanceled()):
                self.error = self.error or JobCancelled("Segmentation cancelled; nothing was written.")
                self._report(str(self.error), Qgis.Info)
            else:
                self._report(str(self.error or "The segmentation failed for an unknown reason."), Qgis.Critical)
        finally:
            if self.on_finished is not None:
                self.on_finished(self)

    def _add_outputs(self, result: JobResult) -> None:
        name = f"{self.request.layer_name or 'layer'} — FactSeg classes"
        layer = QgsRasterLayer(str(result.raster_path), name, "gdal")
        if not layer.isValid():
            self._report(f"The class raster {result.raster_path} was written but QGIS cannot open it.", Qgis.Critical)
            return
        style_class_layer(layer, result.classes)
        self.project.addMapLayer(layer)
        self.added_layers.append(layer)
        if result.vector_path:
            vector = QgsVectorLayer(str(result.vector_path), f"{self.request.layer_name} — FactSeg objects", "ogr")
            if vector.isValid():
                self.project.addMapLayer(vector)
                self.added_layers.append(vector)
        summary = format_statistics(result.statistics) if result.statistics else ""
        polygons = f", {result.feature_count} objects" if result.vector_path else ""
        text = f"{result.grid.width} × {result.grid.height} px in {result.seconds:.1f} s{polygons}. {summary}"
        log(f"Done: {result.raster_path}. {text}", Qgis.Success)
        self._report(text, Qgis.Success, title="FactSeg finished")

    def _report(self, text: str, level: Qgis.MessageLevel, title: str = "FactSeg") -> None:
        log(text, level)
        if self.message_bar is not None:
            self.message_bar.pushMessage(title, text, level=level, duration=0 if level == Qgis.Critical else 15)
