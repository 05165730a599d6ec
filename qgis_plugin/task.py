"""A Segment Layer job from the dialog: ``factseg:segment`` run as a Processing task (QgsProcessingAlgRunnerTask).

The dialog, the toolbox, batch mode, the model builder and ``qgis_process`` thus share one executor, one
parameter set and one way of loading and styling the outputs (Processing's own result handling, with the
algorithm's per-run post-processors). The algorithm is prepared at once, on the main thread, so a bad request
fails before anything runs (:attr:`SegmentRun.prepare_error`); the job then runs in QGIS's task manager, and the
outcome — summary, cancellation or error in plain words — goes to the message bar and the FactSeg log.
"""
from __future__ import annotations

from collections.abc import Callable

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMessageLog,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
)

from .errors import FactSegError
from .run_summary import remember_model, show_summary

LOG_TAG = "FactSeg"
ALGORITHM_ID = "factseg:segment"
LOADED_OUTPUTS = {"OUTPUT": "FactSeg classes", "OUTPUT_VECTOR": "FactSeg objects"}


def log(message: str, level: Qgis.MessageLevel = Qgis.MessageLevel.Info) -> None:
    """Write to the FactSeg tab of QGIS's log panel."""
    QgsMessageLog.logMessage(message, LOG_TAG, level)


class RunFeedback(QgsProcessingFeedback):
    """Keeps the errors the algorithm reports and copies its messages to the FactSeg log."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS API)
        self.errors.append(str(error))
        super().reportError(error, fatalError)

    def pushInfo(self, info):  # noqa: N802
        log(str(info))
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        log(str(warning), Qgis.MessageLevel.Warning)
        super().pushWarning(warning)


class SegmentRun:
    """One run of ``factseg:segment``; ``results``/``error`` hold the outcome once it finished."""

    def __init__(
        self,
        parameters: dict,
        message_bar=None,
        project: QgsProject | None = None,
        on_finished: Callable[[SegmentRun], None] | None = None,
        layer_name: str = "",
    ) -> None:
        self.project = project or QgsProject.instance()
        self.message_bar = message_bar
        self.on_finished = on_finished
        self.layer_name = layer_name or "layer"
        self.algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        if self.algorithm is None:
            raise FactSegError("The FactSeg Processing provider is not loaded (factseg:segment is missing).")
        self.context = QgsProcessingContext()
        self.context.setProject(self.project)
        self.feedback = RunFeedback()
        self.parameters = self._loading(parameters)
        self.results: dict = {}
        self.error: str | None = None
        self.cancelled = False
        self.added_layers: list = []
        self.summary_item = None  # the message bar item with the run's summary and its Details button
        self.task = QgsProcessingAlgRunnerTask(self.algorithm, self.parameters, self.context, self.feedback)
        self.task.setDescription(f"FactSeg: segment {self.layer_name}")
        self.prepare_error = ("; ".join(self.feedback.errors) or "The request was refused.") \
            if self.task.isCanceled() else None
        self.task.executed.connect(self._executed)

    @property
    def request(self):
        """The job these parameters prepare to (grid, reader, worker target, outputs), as the algorithm sees it.

        The task prepares its own copy of the algorithm; this prepares another one the same way (cheap: a grid
        plan and a provider clone), to show or check what will run.
        """
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        if not algorithm.prepare(self.parameters, self.context, RunFeedback()):
            return None
        return algorithm._request  # noqa: SLF001 (our own algorithm class)

    def _loading(self, parameters: dict) -> dict:
        """The parameters, with the class raster and polygons marked to be loaded into the project."""
        loading = dict(parameters)
        for key, title in LOADED_OUTPUTS.items():
            path = loading.get(key)
            if isinstance(path, str) and path:
                definition = QgsProcessingOutputLayerDefinition(path, self.project)
                definition.destinationName = f"{self.layer_name} — {title}"
                loading[key] = definition
        return loading

    def start(self) -> SegmentRun:
        """Hand the task to QGIS's task manager (progress and cancel in its panel too)."""
        if self.prepare_error is not None:
            raise FactSegError(self.prepare_error)
        QgsApplication.taskManager().addTask(self.task)
        log(f"Started: {self.task.description()}")
        return self

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()

    def status(self) -> QgsProcessingAlgRunnerTask.TaskStatus:
        return self.task.status()

    @property
    def progressChanged(self):  # noqa: N802 (the task's signal, as on a QgsTask)
        return self.task.progressChanged

    def _executed(self, ok: bool, results: dict) -> None:
        """Main thread: load and style the outputs (Processing's result handling), or report what went wrong."""
        try:
            if ok:
                self.results = dict(results)
                self._load_outputs()
                text = str(self.results.get("SUMMARY") or "Segmentation finished.")
                log(f"Done: {self.results.get('OUTPUT')}. {text}", Qgis.MessageLevel.Success)
                remember_model(self.parameters)
                self.summary_item = show_summary(self.message_bar, text, self.results, self.parameters.get("INPUT"))
            elif self.cancelled or self.feedback.isCanceled():  # here, or from the task manager's panel
                self.cancelled = True
                self.error = "Segmentation cancelled; the worker stopped and no output was written."
                self._report(self.error, Qgis.MessageLevel.Info)
            else:
                self.error = self.feedback.errors[-1] if self.feedback.errors else \
                    "The segmentation failed for an unknown reason."
                self._report(self.error, Qgis.MessageLevel.Critical)
        finally:
            if self.on_finished is not None:
                self.on_finished(self)

    def _load_outputs(self) -> None:
        from processing.gui.Postprocessing import handleAlgorithmResults  # QGIS's Processing plugin

        added: list = []
        self.project.layersAdded.connect(added.extend)
        try:
            handleAlgorithmResults(self.algorithm, self.context, self.feedback)
        finally:
            self.project.layersAdded.disconnect(added.extend)
        order = [self.results.get(key) for key in LOADED_OUTPUTS]
        self.added_layers = sorted(added, key=lambda layer: next(
            (i for i, path in enumerate(order) if path and layer.source().startswith(str(path))), len(order)))

    def _report(self, text: str, level: Qgis.MessageLevel, title: str = "FactSeg") -> None:
        log(text, level)
        if self.message_bar is not None:
            critical = level == Qgis.MessageLevel.Critical
            self.message_bar.pushMessage(title, text, level=level, duration=0 if critical else 15)
