"""Processing provider ``factseg``: makes ``factseg:segment``, ``factseg:export_training_data`` and
``factseg:train`` available to the toolbox, batch mode, the model builder, ``processing.run`` and ``qgis_process``."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..plugin_info import ICON_PATH, PLUGIN_NAME, version
from .export_algorithm import ExportTrainingDataAlgorithm
from .segment_algorithm import SegmentAlgorithm
from .train_algorithm import TrainAlgorithm


class FactSegProvider(QgsProcessingProvider):
    """Holds the FactSeg algorithms."""

    def id(self) -> str:  # noqa: A003 (QGIS API name)
        return "factseg"

    def name(self) -> str:
        return PLUGIN_NAME

    def longName(self) -> str:  # noqa: N802
        return f"{PLUGIN_NAME} {version()} (small-object segmentation)"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def versionInfo(self) -> str:  # noqa: N802
        return version()

    def loadAlgorithms(self) -> None:  # noqa: N802
        self.addAlgorithm(SegmentAlgorithm())
        self.addAlgorithm(ExportTrainingDataAlgorithm())
        self.addAlgorithm(TrainAlgorithm())
