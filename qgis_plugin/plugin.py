"""The plugin object QGIS loads: the Segment Layer action (toolbar + Raster menu) and the Processing provider."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QIcon

try:
    from qgis.PyQt.QtGui import QAction  # Qt6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 (QGIS 3)

from .dialog import SegmentDialog
from .local_workers import set_keep_alive, stop_all
from .plugin_info import ICON_PATH, PLUGIN_NAME
from .processing_provider import FactSegProvider
from .task import SegmentRun

MENU = "&FactSeg"


class FactSegPlugin:
    """Created by :func:`classFactory`; QGIS calls ``initProcessing``, ``initGui`` and ``unload``."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.provider: FactSegProvider | None = None
        self.dialog: SegmentDialog | None = None
        self.runs: list[SegmentRun] = []  # Python references keep running tasks, contexts and feedback alive

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API)
        """Register the provider (also called by qgis_process, where there is no GUI)."""
        if self.provider is None:
            self.provider = FactSegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        set_keep_alive(True)  # reuse local workers between jobs while QGIS runs; stopped in unload()
        self.action = QAction(QIcon(str(ICON_PATH)), "Segment Layer", self.iface.mainWindow())
        self.action.setObjectName("factsegSegmentLayer")
        self.action.setToolTip("Segment a raster layer with FactSeg (small objects: vehicles, ships, planes…)")
        self.action.triggered.connect(self.show_dialog)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def unload(self) -> None:
        for run in list(self.runs):
            run.cancel()
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.dialog is not None:
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        set_keep_alive(False)
        stop_all()

    def show_dialog(self) -> SegmentDialog:
        """Open (or raise) the Segment Layer dialog; a job starts when it is accepted."""
        if self.dialog is None:
            self.dialog = SegmentDialog(self.iface)
            self.dialog.accepted.connect(self._dialog_accepted)
        self.dialog.show()
        self.dialog.raise_()
        self.dialog.activateWindow()
        return self.dialog

    def _dialog_accepted(self) -> None:
        if self.dialog is not None and self.dialog.run is not None:
            run, self.dialog.run = self.dialog.run, None
            self.start(run)

    def start_run(self, parameters: dict, layer_name: str = "") -> SegmentRun:
        """Run ``factseg:segment`` with ``parameters`` as a Processing task; outputs loaded and styled."""
        return self.start(SegmentRun(parameters, self.iface.messageBar(), layer_name=layer_name))

    def start(self, run: SegmentRun) -> SegmentRun:
        previous = run.on_finished
        run.on_finished = lambda done: (self._run_finished(done), previous and previous(done))
        self.runs.append(run)
        run.start()
        return run

    def _run_finished(self, run: SegmentRun) -> None:
        if run in self.runs:
            self.runs.remove(run)


__all__ = ["FactSegPlugin", "PLUGIN_NAME"]
