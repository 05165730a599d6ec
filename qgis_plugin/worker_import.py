"""Make the ``worker`` package (shipped beside the plugin code) importable inside QGIS.

Installed from the zip, ``worker/`` lies in the plugin folder; in the repository it lies next to
``qgis_plugin/``. The folder is put first on ``sys.path`` only while the client-side modules are imported (so
an unrelated ``worker`` module elsewhere cannot shadow ours), then kept at the end (so ours shadows nothing).
Only torch-free modules are imported: the protocol, the client and the GDAL output helpers.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .settings import plugin_root


def ensure_worker_importable() -> None:
    """Import our ``worker`` client modules once; ImportError in plain words if a foreign ``worker`` is loaded."""
    root = str(plugin_root())
    loaded = sys.modules.get("worker")
    origin = getattr(loaded, "__file__", None) if loaded is not None else None
    if origin and Path(origin).resolve().parent.parent != Path(root):
        # Already loaded from elsewhere (e.g. a FactSeg checkout on PYTHONPATH): fine if it is FactSeg's.
        try:
            import worker.client  # noqa: F401
            import worker.io.raster_output  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"FactSeg: another Python package named 'worker' is already loaded (from {origin}) and it is "
                f"not FactSeg's worker ({exc}); FactSeg needs its own, from {root}.") from exc
    sys.path.insert(0, root)
    try:
        import worker.client  # noqa: F401
        import worker.client.protocol  # noqa: F401
        import worker.io.raster_output  # noqa: F401
        import worker.io.vectorize  # noqa: F401
    finally:
        sys.path.remove(root)
        if root not in sys.path:
            sys.path.append(root)
