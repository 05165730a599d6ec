"""How QGIS's own plugin manager sees an installed plugin folder, for a given QGIS version.

QGIS's pyplugin_installer reads the folder's metadata.txt (``Plugins.getInstalledPlugin``) and decides whether the
plugin suits the running QGIS (``isCompatible(pyQgisVersion(), min, max)``, with max defaulting to the minimum's
major version + ".99"). Nothing of that is re-implemented here: the only thing set is the version string QGIS
itself reports (``Qgis.QGIS_VERSION``, read by ``pyQgisVersion``), so the installer's own code judges the plugin
as QGIS 3.22, 3.44, 4.0 … would.

Imported by the host's tests (QGIS 3.22), and run as a script in the Debian 13 root (QGIS 3.44):
``python3 plugin_manager_probe.py PLUGIN_DIR VERSION...`` prints a JSON object {version: record}; VERSION
"current" means the QGIS that runs the script, unchanged.
"""
from __future__ import annotations

import json
import os
import sys
import types

FIELDS = ("error", "error_details", "version_installed", "name", "experimental")


def installer_modules():
    """QGIS's pyplugin_installer (installer_data, version_compare), from QGIS's own Python folder."""
    from qgis.core import QgsApplication

    python_dir = QgsApplication.pkgDataPath() + "/python"
    if python_dir not in sys.path:
        sys.path.append(python_dir)
    from pyplugin_installer import installer_data, version_compare

    return installer_data, version_compare


def as_seen_by(plugin_dir: str, versions: list[str], key: str = "factseg") -> dict[str, dict]:
    """{version: the installer's record of the plugin (error, error_details, …) and the version it compared}."""
    installer_data, version_compare = installer_modules()
    real_qgis = version_compare.Qgis
    seen = {}
    try:
        for version in versions:
            if version != "current":  # what Qgis.QGIS_VERSION reads on that release, e.g. "4.0.0-Norrköping"
                version_compare.Qgis = types.SimpleNamespace(QGIS_VERSION=f"{version}.0-Probe")
            record = installer_data.plugins.getInstalledPlugin(key, path=plugin_dir, readOnly=False)
            seen[version] = {name: record[name] for name in FIELDS}
            seen[version]["compared_as"] = version_compare.pyQgisVersion()
            version_compare.Qgis = real_qgis
    finally:
        version_compare.Qgis = real_qgis
    return seen


def main() -> None:
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    print(json.dumps(as_seen_by(sys.argv[1], sys.argv[2:])), flush=True)
    os._exit(0)  # QGIS's own teardown is not what is being checked


if __name__ == "__main__":
    main()
