"""FactSeg for QGIS: segment raster layers with a FactSeg worker (Segment Layer dialog + Processing algorithm).

QGIS imports this package and calls :func:`classFactory`. The plugin itself never imports torch: the network
runs in a separate worker process reached over ZeroMQ (``worker.client``).
"""
from __future__ import annotations

try:
    from . import worker_import  # noqa: F401 (the client side of worker: pyzmq, numpy, GDAL)

    IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # pyzmq missing in QGIS's Python, typically: say so in words, not a traceback
    IMPORT_ERROR = exc


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    """Entry point QGIS calls with its interface object."""
    if IMPORT_ERROR is not None:
        from .missing import MissingDependencyPlugin

        return MissingDependencyPlugin(iface, IMPORT_ERROR)
    from .plugin import FactSegPlugin

    return FactSegPlugin(iface)
