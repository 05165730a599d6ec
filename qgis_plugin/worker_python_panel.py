"""The dialog's worker-Python row: the interpreter, what it offers (checked in a task, never on the GUI thread),
and *Set up worker…*, which creates a dedicated Python for the worker (:class:`.worker_setup.SetupWorkerTask`).

A Python is offered only once it is known to import torch or onnxruntime; otherwise the row says what is missing
and how to get it.
"""
from __future__ import annotations

import html

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .dialog_widgets import fit_wrapped_labels
from .errors import FactSegError
from .task import log
from .worker_python import PythonCheck, check_worker_python
from .worker_setup import SetupWorkerTask


class WorkerPythonPanel(QWidget):
    """Interpreter path, its check result and the set-up button; ``check`` holds the latest PythonCheck."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.python_widget = QgsFileWidget()
        self.python_widget.setDialogTitle("Python interpreter with torch")
        self.setup_button = QPushButton("Set up worker…")
        self.setup_button.setToolTip("Create a Python environment for the worker with the pinned requirements "
                                     "(CUDA torch when an NVIDIA GPU is present, else CPU); it becomes the default")
        self.setup_button.clicked.connect(self.set_up)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.python_widget, 1)
        row.addWidget(self.setup_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status_label)
        self.check: PythonCheck | None = None
        self._tasks: list[QgsTask] = []  # Python references keep running tasks alive
        self.python_widget.fileChanged.connect(lambda _path: self.check_python())

    def filePath(self) -> str:  # noqa: N802 (the QgsFileWidget interface the dialog used)
        return self.python_widget.filePath()

    def setFilePath(self, path: str) -> None:  # noqa: N802
        """Set the interpreter and check it at once, in the background (not only when Segment is pressed)."""
        changed = path != self.python_widget.filePath()
        self.python_widget.setFilePath(path)
        if changed or self.check is None:
            self.check_python()

    def require_usable(self) -> None:
        """FactSegError (the check's own sentence) unless the worker Python is known to run the worker."""
        if self.check is None:
            if not self.filePath().strip():
                raise FactSegError("No worker Python is set: press Set up worker… to make one, or choose a Python "
                                   "that has torch.")
            raise FactSegError("The worker Python is still being checked: press Segment again in a moment.")
        if not self.check.ok:
            raise FactSegError(self.check.message)

    def check_python(self) -> QgsTask | None:
        """Ask the chosen Python, in a task, whether it imports torch/onnxruntime; show what is missing."""
        python = self.filePath().strip()
        self.check = None
        if not python:
            self.status_label.setText("")
            return None
        self.status_label.setText(html.escape(f"Checking {python} …"))
        task = QgsTask.fromFunction(f"Check worker Python {python}", lambda _task: check_worker_python(python),
                                    on_finished=lambda exc, result: self._checked(python, exc, result))
        return self._start(task)

    def _checked(self, python: str, exc: Exception | None, result: PythonCheck | None) -> None:
        try:
            if python != self.filePath().strip():
                return  # an older check; the path has changed since
        except RuntimeError:  # the dialog was closed and deleted while the check ran
            return
        text = str(exc) if exc is not None else result.message if result is not None else "The check failed."
        self.check = result or PythonCheck(python, False, None, None, None, None, None, False, text)
        try:
            self._show(text)
        except RuntimeError:  # the dialog was closed and deleted while the check ran
            pass

    def _show(self, text: str) -> None:
        """The whole status, wrapped over as many lines as it needs (never clipped to one)."""
        self.status_label.setText(html.escape(text))
        fit_wrapped_labels(self.window())

    def set_up(self) -> SetupWorkerTask:
        """Create the worker Python (progress and cancel in the task manager, steps in the FactSeg log)."""
        task = SetupWorkerTask(on_log=log)
        task.done.connect(lambda ok, message: self._set_up_done(task, ok, message))
        self.setup_button.setEnabled(False)
        self.status_label.setText("Setting up a worker Python (see the task manager and the FactSeg log) …")
        return self._start(task)

    def _set_up_done(self, task: SetupWorkerTask, ok: bool, message: str) -> None:
        self.setup_button.setEnabled(True)
        self._show(message)
        if ok and task.python:
            self.setFilePath(task.python)

    def _start(self, task: QgsTask) -> QgsTask:
        self._tasks = [t for t in self._tasks if _running(t)]
        self._tasks.append(task)
        QgsApplication.taskManager().addTask(task)
        return task


def _running(task: QgsTask) -> bool:
    """Whether a task is still queued or running (the task manager deletes finished ones)."""
    try:
        return task.status() not in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated)
    except RuntimeError:  # already deleted by the task manager
        return False
