"""What every FactSeg Processing algorithm shares: its id, title, tags and icon, declared as class attributes."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

from ..plugin_info import ICON_PATH


class FactSegAlgorithm(QgsProcessingAlgorithm):
    """A Processing algorithm of the ``factseg`` provider: subclasses set NAME, TITLE and TAGS."""

    NAME = ""
    TITLE = ""
    TAGS: tuple[str, ...] = ()

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.TITLE

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def tags(self) -> list[str]:
        return [*self.TAGS, "factseg"]

    def createInstance(self) -> FactSegAlgorithm:  # noqa: N802
        return type(self)()
