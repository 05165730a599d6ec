"""Exact grids: at native resolution the output's geotransform and size equal the input's, with ``==``, in
geographic and projected CRSs — the grid comes from the source's own numbers, never from extent ÷ size."""
from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from plugin_support import PATCH, STRIDE, scene, write_geotiff
from qgis.core import QgsRasterLayer

pytestmark = pytest.mark.qgis

GRIDS = {
    "4326-1e-05": ((15.123457, 1e-05, 0.0, 45.987653, 0.0, -1e-05), 4326, (91, 137)),
    "4326-2.7e-06": ((-3.7021, 2.7e-06, 0.0, 40.4168, 0.0, -2.7e-06), 4326, (83, 149)),
    "32633-0.3m": ((512345.7, 0.3, 0.0, 4012345.9, 0.0, -0.3), 32633, (97, 131)),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_native_grid_is_the_layers_own(qgis_app, tmp_path, name):
    from qgis_plugin.grid import plan_grid

    gt, epsg, (height, width) = GRIDS[name]
    src = write_geotiff(tmp_path / "in.tif", scene(height, width), gt, epsg)
    layer = QgsRasterLayer(str(src), "in")
    grid = plan_grid(layer)
    assert grid.geotransform == gt
    assert (grid.width, grid.height) == (width, height)
    naive = layer.extent().width() / layer.width()
    if name.startswith("4326"):  # what extent ÷ size gives: not the file's number (the bug this guards against)
        assert naive != gt[1]


@pytest.mark.parametrize("name", list(GRIDS))
def test_processing_output_has_the_input_grid(provider, worker, tmp_path, name):
    import processing

    gt, epsg, (height, width) = GRIDS[name]
    src = write_geotiff(tmp_path / "in.tif", scene(height, width, seed=3), gt, epsg)
    result = processing.run("factseg:segment", {"INPUT": str(src), "WORKER": worker.endpoint, "PATCH": PATCH,
                                                "STRIDE": STRIDE, "OUTPUT": str(tmp_path / "out.tif")})
    out = gdal.Open(result["OUTPUT"])
    assert out.GetGeoTransform() == gt
    assert (out.RasterXSize, out.RasterYSize) == (width, height)
    assert np.unique(out.GetRasterBand(1).ReadAsArray()).size >= 1
