"""Stand-in plugin when a dependency of the client is missing in QGIS's Python (pyzmq, usually): it says what
to install instead of failing with a traceback at QGIS start-up."""
from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog


def advice(error: BaseException) -> str:
    """Plain-words explanation of an import error of the plugin's client side."""
    name = getattr(error, "name", None) or str(error)
    if name == "zmq" or "zmq" in str(error):
        return ("FactSeg needs pyzmq in QGIS's Python to talk to its worker: install it (Debian/Ubuntu: "
                "'sudo apt install python3-zmq'; elsewhere: 'python -m pip install pyzmq' in the OSGeo4W shell or "
                "QGIS's Python), then restart QGIS.")
    return f"FactSeg cannot start: {error}"


class MissingDependencyPlugin:
    """Shows the advice once in the message bar and the log; does nothing else."""

    def __init__(self, iface, error: BaseException) -> None:
        self.iface = iface
        self.message = advice(error)

    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        QgsMessageLog.logMessage(self.message, "FactSeg", Qgis.MessageLevel.Critical)
        if self.iface is not None:
            self.iface.messageBar().pushMessage("FactSeg", self.message, level=Qgis.MessageLevel.Critical, duration=0)

    def unload(self) -> None:
        pass
