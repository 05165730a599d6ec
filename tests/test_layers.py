"""The layer rule that matters at run time: what runs inside QGIS never loads torch or onnxruntime."""
from __future__ import annotations

import subprocess
import sys

from project_paths import REPO_ROOT

QGIS_SIDE = ["factseg_contract", "worker.contract", "worker.client.protocol", "worker.client",
             "worker.io.raster_output", "worker.io.vectorize", "worker.io.pipeline", "qgis_plugin",
             "qgis_plugin.plugin", "qgis_plugin.job", "qgis_plugin.task", "qgis_plugin.dialog",
             "qgis_plugin.processing_provider.provider"]


def test_qgis_side_modules_do_not_load_heavy_packages():
    code = (
        "import importlib, sys\n"
        f"for name in {QGIS_SIDE!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnxruntime', 'onnx', 'factseg_core', 'training'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"QGIS-side code loaded: {result.stdout.strip()}"
