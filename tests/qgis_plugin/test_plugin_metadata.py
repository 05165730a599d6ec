"""metadata.txt as QGIS's plugin manager reads it: QGIS's own pyplugin_installer (here 3.22's; 3.44's in
tests/qgis344) parses the built plugin folder and judges it compatible with QGIS 3.22 to 4.x, not with 5.0.

Without qgisMaximumVersion the installer assumes "<minimum major>.99" = 3.99, and QGIS 4 hides the plugin.
"""
from __future__ import annotations

import pytest
from plugin_manager_probe import as_seen_by
from plugin_support import build_plugin_zip, unpack_plugin

pytestmark = pytest.mark.qgis
#: QGIS reports its development builds as X.99, which the installer compares as the next major (3.99 -> 4.0.0).
LISTED = ["3.22", "3.40", "3.44", "3.99", "4.0", "4.2"]
NOT_LISTED = ["3.20", "4.99", "5.0"]


@pytest.fixture(scope="module")
def installed(qgis_app, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("installer")
    return unpack_plugin(build_plugin_zip(tmp), tmp / "plugins")


def test_plugin_manager_lists_the_plugin_for_qgis_3_22_to_4(installed):
    seen = as_seen_by(str(installed), [*LISTED, "current"])
    for version, record in seen.items():
        assert record["error"] == "", f"QGIS {version}: {record}"
        assert record["name"] == "FactSeg" and record["version_installed"] == "0.1.0"
    assert seen["4.0"]["compared_as"] == seen["3.99"]["compared_as"] == "4.0.0" and seen["current"]["compared_as"].startswith("3.22.")


def test_plugin_manager_marks_other_majors_incompatible(installed):
    """The bound is real: QGIS 5 and its development builds (and a QGIS older than the minimum) see the plugin
    as incompatible."""
    for version, record in as_seen_by(str(installed), NOT_LISTED).items():
        assert record["error"] == "incompatible", f"QGIS {version}: {record}"
        assert record["error_details"] == "3.22 - 4.99"


def test_without_a_maximum_qgis_4_would_not_list_it(installed, tmp_path):
    """Why the line is there: the same folder with qgisMaximumVersion removed is incompatible with QGIS 4.0."""
    import shutil

    copy = shutil.copytree(installed, tmp_path / "factseg")
    metadata = copy / "metadata.txt"
    metadata.write_text("".join(line for line in metadata.read_text(encoding="utf-8").splitlines(keepends=True)
                                if not line.startswith("qgisMaximumVersion")), encoding="utf-8")
    seen = as_seen_by(str(copy), ["3.44", "4.0"])
    assert seen["3.44"]["error"] == ""
    assert seen["4.0"]["error"] == "incompatible" and seen["4.0"]["error_details"] == "3.22 - 3.99"
