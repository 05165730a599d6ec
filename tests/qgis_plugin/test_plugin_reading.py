"""Reading pixels through the QGIS API (file, VRT, XYZ tiles), planning the output grid, styling and the dialog,
in a real headless QGIS, without a worker."""
from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from plugin_support import UTM_GT, scene, write_geotiff
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

pytestmark = pytest.mark.qgis



@pytest.fixture()
def utm_tif(tmp_path):
    data = scene(80, 100, seed=11).astype(np.uint8)
    return write_geotiff(tmp_path / "utm.tif", data, UTM_GT, 32633), data


def layer_of(path, name="layer", provider="gdal") -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name, provider)
    assert layer.isValid(), path
    return layer


# -- grid ---------------------------------------------------------------------------------------------------


def test_grid_native_whole_layer(utm_tif):
    from qgis_plugin.grid import plan_grid

    grid = plan_grid(layer_of(utm_tif[0]))
    assert (grid.width, grid.height) == (100, 80)
    assert grid.geotransform == pytest.approx(UTM_GT)
    assert grid.crs.authid() == "EPSG:32633"


def test_grid_clips_to_layer_and_snaps(utm_tif):
    from qgis_plugin.grid import plan_grid

    grid = plan_grid(layer_of(utm_tif[0]), QgsRectangle(499990, 3999970.2, 500010.3, 4000010))
    assert grid.geotransform == pytest.approx((500000.0, 0.5, 0, 4000000.0, 0, -0.5))
    assert (grid.width, grid.height) == (21, 60)


def test_grid_centimetres_per_pixel_projected(utm_tif):
    from qgis_plugin.grid import plan_grid

    grid = plan_grid(layer_of(utm_tif[0]), resolution=100.0, units="cm_per_px")
    # UTM scale factor near the central meridian is 0.9996: 1 m on the ground is 0.9996 map units
    assert grid.res_x == pytest.approx(0.9996, rel=2e-4) and grid.res_y == pytest.approx(0.9996, rel=2e-4)
    assert grid.width == 51 and grid.height == 41  # 50 m × 40 m, rounded up


def test_grid_centimetres_per_pixel_web_mercator(tmp_path):
    """Web Mercator map units shrink on the ground by cos(latitude): 1 m/px at 60° N is 2 map units."""
    from qgis_plugin.grid import plan_grid

    y60 = 8399737.89  # latitude 60° in EPSG:3857
    path = write_geotiff(tmp_path / "merc.tif", scene(50, 50), (1000000.0, 1.0, 0, y60 + 25, 0, -1.0), 3857)
    grid = plan_grid(layer_of(path), resolution=100.0, units="cm_per_px")
    assert grid.res_x == pytest.approx(2.0, rel=5e-3) and grid.res_y == pytest.approx(2.0, rel=5e-3)


@pytest.mark.parametrize(
    ("extent", "message"),
    [
        (QgsRectangle(600000, 3000000, 600100, 3000100), "outside the raster layer"),
        (QgsRectangle(500010, 3999950, 500010, 3999980), "extent is empty"),
    ],
)
def test_grid_errors_in_words(utm_tif, extent, message):
    from qgis_plugin.errors import FactSegError
    from qgis_plugin.grid import plan_grid

    with pytest.raises(FactSegError, match=message):
        plan_grid(layer_of(utm_tif[0]), extent)


# -- reading ------------------------------------------------------------------------------------------------


def test_reads_exact_pixels_of_a_window(utm_tif):
    from qgis_plugin.grid import plan_grid
    from qgis_plugin.raster_reading import RasterReader

    path, data = utm_tif
    layer = layer_of(path)
    reader = RasterReader.from_layer(layer, plan_grid(layer))
    rgb, valid = reader(10, 20, 50, 90)
    np.testing.assert_array_equal(rgb, data[:, 10:50, 20:90].transpose(1, 2, 0))
    assert valid.all() and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


def test_reads_through_a_vrt(utm_tif, tmp_path):
    from qgis_plugin.grid import plan_grid
    from qgis_plugin.raster_reading import RasterReader

    path, data = utm_tif
    vrt = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(vrt), [str(path)]).FlushCache()
    layer = layer_of(vrt)
    rgb, _ = RasterReader.from_layer(layer, plan_grid(layer))(0, 0, 80, 100)
    np.testing.assert_array_equal(rgb, data.transpose(1, 2, 0))


def test_reads_xyz_tiles_argb(tmp_path):
    """An XYZ tile layer (QGIS's wms provider, ARGB pixels) read at its zoom-1 resolution."""
    from PIL import Image

    from qgis_plugin.grid import plan_grid
    from qgis_plugin.raster_reading import RasterReader

    for x in (0, 1):
        for y in (0, 1):
            tile = np.zeros((256, 256, 3), np.uint8)
            tile[..., 0], tile[..., 1], tile[..., 2] = 20 + 200 * x, 30 + 200 * y, np.arange(256)[None, :]
            (tmp_path / "1" / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(tile).save(tmp_path / "1" / str(x) / f"{y}.png")
    uri = f"type=xyz&url=file://{tmp_path}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax=1"
    layer = layer_of(uri, "tiles", "wms")
    from qgis_plugin.errors import FactSegError

    with pytest.raises(FactSegError, match="no native pixel size"):
        plan_grid(layer)
    grid = plan_grid(layer, QgsRectangle(-15e6, -15e6, -5e6, 5e6), resolution=40075016.68557849 / 512)
    rgb, valid = RasterReader.from_layer(layer, grid)(0, 0, grid.height, grid.width)
    assert valid.all()
    assert tuple(rgb[0, 0]) == (20, 30, 64)  # tile (0, 0), column 64
    assert tuple(rgb[-1, 0]) == (20, 230, 64)  # tile (0, 1)


def test_sixteen_bit_scaling_and_band_mapping(tmp_path):
    from qgis_plugin.grid import plan_grid
    from qgis_plugin.raster_reading import RasterReader

    data = (scene(64, 64, bands=4, seed=12, scale=3000.0) + 500).astype(np.uint16)
    layer = layer_of(write_geotiff(tmp_path / "ms.tif", data, UTM_GT, 32633, gdal.GDT_UInt16))
    grid = plan_grid(layer)
    reader = RasterReader.from_layer(layer, grid, bands=(4, 3, 2), scaling="minmax")
    rgb, _ = reader(0, 0, 64, 64)
    for channel, band in enumerate((4, 3, 2)):
        values = data[band - 1].astype(float)
        expected = np.clip(np.rint((values - values.min()) * 255 / (values.max() - values.min())), 0, 255)
        np.testing.assert_array_equal(rgb[..., channel], expected)
    auto = RasterReader.from_layer(layer, grid, bands=(4, 3, 2), scaling="auto")
    rgb_auto, _ = auto(0, 0, 64, 64)
    low, high = layer.dataProvider().cumulativeCut(4, 0.02, 0.98)  # QGIS's own default stretch
    assert auto.scales[4] == pytest.approx((low, high))
    saturated = np.mean((rgb_auto[..., 0] == 0) | (rgb_auto[..., 0] == 255))
    assert 0.02 < saturated < 0.1  # about 2 % cut at each end


def test_nodata_and_outside_pixels_are_invalid(tmp_path):
    from qgis_plugin.grid import OutputGrid
    from qgis_plugin.raster_reading import RasterReader

    data = scene(40, 40, seed=13).astype(np.uint8)
    data[data == 0] = 1
    data[1, 5:10, 5:10] = 0  # nodata in one band only: the pixel is still invalid
    layer = layer_of(write_geotiff(tmp_path / "nd.tif", data, UTM_GT, 32633, nodata=0))
    # a grid reaching 10 px beyond the left edge of the raster
    grid = OutputGrid(layer.crs(), 499995.0, 4000000.0, 0.5, 0.5, 50, 40)
    _, valid = RasterReader.from_layer(layer, grid)(0, 0, 40, 50)
    assert not valid[:, :10].any()
    assert not valid[5:10, 15:20].any()
    assert valid[20:, 10:].all()


def test_reprojected_reading_marks_outside_invalid(utm_tif):
    """A grid in another CRS goes through QgsRasterProjector; pixels outside the source come back invalid."""
    from qgis_plugin.grid import OutputGrid, transform_extent
    from qgis_plugin.raster_reading import RasterReader

    path, _ = utm_tif
    layer = layer_of(path)
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    box = transform_extent(layer.extent(), layer.crs(), wgs84, QgsProject.instance().transformContext())
    pad = box.width() * 0.25
    grid = OutputGrid(wgs84, box.xMinimum() - pad, box.yMaximum(), box.width() * 1.5 / 60, box.height() / 40, 60, 40)
    rgb, valid = RasterReader.from_layer(layer, grid)(0, 0, 40, 60)
    assert not valid[:, :8].any() and not valid[:, -8:].any()
    assert valid[5:35, 15:45].all() and rgb[valid].std() > 0


def test_users_layer_is_not_touched(utm_tif):
    from qgis_plugin.grid import plan_grid
    from qgis_plugin.raster_reading import RasterReader

    layer = layer_of(utm_tif[0])
    before = (layer.renderer().type(), layer.dataProvider().zoomedInResamplingMethod(),
              layer.dataProvider().isProviderResamplingEnabled())
    grid = plan_grid(layer, resolution=0.3)
    reader = RasterReader.from_layer(layer, grid)
    reader(0, 0, grid.height, grid.width)
    assert reader.provider.zoomedInResamplingMethod() == QgsRasterDataProvider.ResamplingMethod.Bilinear
    assert (layer.renderer().type(), layer.dataProvider().zoomedInResamplingMethod(),
            layer.dataProvider().isProviderResamplingEnabled()) == before


def test_band_mapping_errors_in_words():
    from qgis_plugin.errors import FactSegError
    from qgis_plugin.raster_reading import parse_bands

    assert parse_bands("4,3,2", 4) == (4, 3, 2)
    assert parse_bands("2", 4) == (2, 2, 2)
    assert parse_bands("", 4) is None
    with pytest.raises(FactSegError, match="Band 5 does not exist"):
        parse_bands("5,3,2", 4)
    with pytest.raises(FactSegError, match="3 bands"):
        parse_bands("1,2", 4)


# -- styling and settings -----------------------------------------------------------------------------------


def test_class_renderer_uses_worker_classes(utm_tif):
    from qgis_plugin.styling import style_class_layer

    classes = [{"id": 0, "name": "background", "color": [0, 0, 0]},
               {"id": 1, "name": "oil_palm", "color": [10, 200, 30]}]  # a retrained model's own classes
    layer = layer_of(utm_tif[0])
    style_class_layer(layer, classes)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    # the object classes by name in the display palette; background (0) is left out: transparent over the imagery
    from qgis_plugin.styling import DISPLAY_PALETTE

    assert [(c.value, c.label, c.color.getRgb()[:3]) for c in renderer.classes()] == [
        (1, "oil palm", DISPLAY_PALETTE[0])]


def test_settings_round_trip():
    from qgis_plugin.settings import PluginSettings

    settings = PluginSettings.load()
    settings.endpoint, settings.patch, settings.add_polygons = "tcp://10.0.0.5:6000", 512, True
    settings.save()
    again = PluginSettings.load()
    assert (again.endpoint, again.patch, again.add_polygons) == ("tcp://10.0.0.5:6000", 512, True)
    PluginSettings().save()


# -- dialog -------------------------------------------------------------------------------------------------


@pytest.fixture()
def dialog(qgis_iface, utm_tif, provider):
    from qgis_plugin.dialog import SegmentDialog
    from qgis_plugin.settings import PluginSettings

    PluginSettings().save()
    layer = layer_of(utm_tif[0], "scene")
    QgsProject.instance().addMapLayer(layer)
    dlg = SegmentDialog(qgis_iface)
    dlg.layer_combo.setLayer(layer)
    yield dlg
    dlg.close()
    QgsProject.instance().removeAllMapLayers()


def test_dialog_defaults_from_layer(dialog):
    assert dialog.resolution_spin.value() == pytest.approx(0.5)
    assert [c.currentBand() for c in dialog.band_combos] == [1, 2, 3]
    dialog.units_combo.setCurrentIndex(1)  # cm/px: 0.5 m map units × UTM scale ≈ 50 cm
    assert dialog.resolution_spin.value() == pytest.approx(50.0, rel=1e-3)


def test_dialog_builds_request_and_remembers(dialog, tmp_path):
    from qgis_plugin.dialog import SegmentDialog

    dialog.endpoint_edit.setText("tcp://127.0.0.1:5999")
    dialog.patch_spin.setValue(256)
    dialog.stride_spin.setValue(128)
    dialog.output_widget.setFilePath(str(tmp_path / "x.tif"))
    dialog.polygons_check.setChecked(True)
    dialog.accept()
    assert dialog.error_label.text() == ""
    request = dialog.request
    assert request.target.endpoint == "tcp://127.0.0.1:5999"
    assert (request.patch, request.stride, request.grid.width, request.grid.height) == (256, 128, 100, 80)
    assert str(request.vector_path).endswith("x_objects.gpkg")
    again = SegmentDialog(None)
    assert (again.endpoint_edit.text(), again.patch_spin.value(), again.polygons_check.isChecked()) == (
        "tcp://127.0.0.1:5999", 256, True)


def test_dialog_extent_from_selected_polygons(dialog):
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "areas", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500010, 3999970, 500030, 3999990)))
    polygons.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(polygons)
    dialog.endpoint_edit.setText("tcp://127.0.0.1:5999")
    dialog.extent_combo.setCurrentIndex(2)
    dialog.polygon_combo.setLayer(polygons)
    dialog.accept()
    assert "No features are selected" in dialog.error_label.text()
    polygons.selectAll()
    dialog.accept()
    grid = dialog.request.grid
    assert (grid.x_min, grid.y_max, grid.width, grid.height) == (500010.0, 3999990.0, 40, 40)
    _, valid = dialog.request.reader(0, 0, 40, 40)
    assert valid.all()  # the rectangle fills its own bounding box
    assert dialog.request.reader.mask is not None


def test_dialog_drawn_rectangle_and_errors(dialog):
    dialog.endpoint_edit.setText("tcp://127.0.0.1:5999")
    dialog.extent_combo.setCurrentIndex(3)
    dialog.accept()
    assert "Draw a rectangle" in dialog.error_label.text()
    dialog.set_drawn_extent(QgsRectangle(600000, 3000000, 600100, 3000100), QgsCoordinateReferenceSystem("EPSG:32633"))
    dialog.accept()
    assert "outside the raster layer" in dialog.error_label.text()
    dialog.set_drawn_extent(QgsRectangle(500000, 3999990, 500005, 4000000), QgsCoordinateReferenceSystem("EPSG:32633"))
    dialog.accept()
    assert (dialog.request.grid.width, dialog.request.grid.height) == (10, 20)
    dialog.endpoint_edit.setText("")
    dialog.accept()
    assert "worker endpoint" in dialog.error_label.text()


@pytest.mark.parametrize("origin_res", [(499995.0, 0.5), (499997.3, 0.7), (499999.9, 0.37)])
def test_outside_mask_matches_the_providers_bitmap(tmp_path, origin_res):
    """The geometric 'outside the source' mask agrees with QGIS's own nodata bitmap (read pixel by pixel)."""
    from qgis_plugin.grid import OutputGrid
    from qgis_plugin.raster_reading import RasterReader, block_to_array

    origin, res = origin_res
    layer = layer_of(write_geotiff(tmp_path / "a.tif", scene(40, 40, seed=14), UTM_GT, 32633))
    grid = OutputGrid(layer.crs(), origin, 4000003.1, res, res, 50, 55)
    reader = RasterReader.from_layer(layer, grid)
    _, valid = reader(0, 0, 55, 50)
    block = layer.dataProvider().block(1, grid.extent, 50, 55)
    _, slow_invalid = block_to_array(block, 55, 50)
    assert (~valid).sum() > 0
    np.testing.assert_array_equal(valid, ~slow_invalid)


def test_dialog_draw_on_map_uses_the_canvas_tool(dialog, qgis_iface):
    from qgis.gui import QgsMapToolExtent

    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32633"))
    dialog.endpoint_edit.setText("tcp://127.0.0.1:5999")
    dialog.show()
    dialog.extent_combo.setCurrentIndex(3)
    dialog.draw_button.click()
    tool = canvas.mapTool()
    assert isinstance(tool, QgsMapToolExtent) and not dialog.isVisible()
    tool.extentChanged.emit(QgsRectangle(500020, 3999970, 500030, 3999980))
    assert dialog.isVisible() and canvas.mapTool() is not tool
    dialog.accept()
    grid = dialog.request.grid
    assert (grid.x_min, grid.y_max, grid.width, grid.height) == (500020.0, 3999980.0, 20, 20)


def test_dialog_map_canvas_extent_in_another_crs(dialog, qgis_iface):
    from qgis_plugin.grid import transform_extent

    canvas = qgis_iface.mapCanvas()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas.setDestinationCrs(wgs84)
    utm = QgsCoordinateReferenceSystem("EPSG:32633")
    box = transform_extent(QgsRectangle(500010, 3999950, 500040, 3999990), utm, wgs84,
                           QgsProject.instance().transformContext())
    canvas.setExtent(box)
    dialog.endpoint_edit.setText("tcp://127.0.0.1:5999")
    dialog.extent_combo.setCurrentIndex(1)
    dialog.accept()
    grid = dialog.request.grid
    shown = canvas.extent()  # the canvas widens the box to its aspect ratio
    expected = transform_extent(shown, wgs84, utm, QgsProject.instance().transformContext()).intersect(
        dialog.layer_combo.currentLayer().extent())
    assert grid.x_min == pytest.approx(np.floor((expected.xMinimum() - 500000) / 0.5) * 0.5 + 500000)
    assert grid.y_max == pytest.approx(4000000 - np.floor((4000000 - expected.yMaximum()) / 0.5) * 0.5)
    canvas.setDestinationCrs(utm)
