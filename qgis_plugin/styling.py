"""Results legible over the imagery: class rasters and polygons styled with one display palette.

The GeoTIFF keeps the model's own colour table and category names (for GDAL and other software). On the map the
plugin uses a *display* palette instead, because the model's colours are chosen for a black background: iSAID's
are six shades of dark blue that vanish on water and shadow, and its background is opaque black. The display
palette (:data:`DISPLAY_PALETTE`, this project's own) is fully saturated, light hues spaced around the colour
wheel, and it gives the most frequent small objects (small and large vehicles, ships, storage tanks, planes) the
hues rarest in aerial imagery — hot pink, orange, magenta, cyan, orchid — so that they stand out from asphalt,
vegetation, water, roofs and from each other. Class 0 (FactSeg's background channel) and nodata are left out of
the renderer, so they are transparent and the legend lists only the object classes, by name (after a run, only
those it found). Polygons use the same colours, by class id, as a light fill with a darker outline.
"""
from __future__ import annotations

from collections.abc import Sequence

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

BACKGROUND_ID = 0  # FactSeg's class 0 is the background channel (p0 = softmax0 · (1 − sigmoid(fg)))
DISPLAY_PALETTE = (  # by class id 1, 2, …; the iSAID class each colour lands on is noted
    (255, 0, 255),    # 1 ship: magenta
    (40, 40, 255),    # 2 roundabout: blue (this project's iSAID table: channel 2 is roundabout)
    (128, 255, 0),    # 3 baseball diamond: lime
    (0, 128, 255),    # 4 tennis court: azure
    (255, 255, 0),    # 5 basketball court: yellow
    (150, 50, 255),   # 6 ground track field: violet
    (255, 0, 0),      # 7 bridge: red
    (255, 128, 0),    # 8 large vehicle: orange
    (255, 0, 128),    # 9 small vehicle: hot pink
    (0, 255, 128),    # 10 helicopter: spring green
    (255, 150, 120),  # 11 swimming pool: salmon
    (0, 255, 255),    # 12 storage tank: cyan
    (0, 200, 160),    # 13 soccer ball field: teal
    (255, 128, 255),  # 14 plane: orchid
    (200, 160, 255),  # 15 harbor: lilac
)
POLYGON_FILL_ALPHA = 60  # of 255: a light tint, so polygons read apart from the opaque class raster
POLYGON_OUTLINE_DARKER = 170  # QColor.darker factor: the outline stays visible over the raster's own colour
POLYGON_OUTLINE_MM = 0.6


def display_name(name: str) -> str:
    """'small_vehicle' → 'small vehicle' (labels in the legend read as words)."""
    return str(name).replace("_", " ")


def object_classes(classes: Sequence[dict]) -> list[dict]:
    """The classes drawn on the map: every class but the background."""
    return [c for c in classes if int(c["id"]) != BACKGROUND_ID]


def display_color(class_id: int) -> QColor:
    """The display colour of object class ``class_id`` (ids 1, 2, … take the palette in order, cycling)."""
    return QColor(*DISPLAY_PALETTE[(int(class_id) - 1) % len(DISPLAY_PALETTE)])


def class_entries(classes: Sequence[dict]) -> list[QgsPalettedRasterRenderer.Class]:
    """One renderer class per object class: value = class id, display colour, label = readable name."""
    return [QgsPalettedRasterRenderer.Class(int(c["id"]), display_color(c["id"]), display_name(c["name"]))
            for c in object_classes(classes)]


def class_renderer(layer: QgsRasterLayer, classes: Sequence[dict]) -> QgsPalettedRasterRenderer:
    """A paletted renderer on band 1 of ``layer``: object classes opaque, background and nodata transparent."""
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, class_entries(classes))


def style_class_layer(layer: QgsRasterLayer, classes: Sequence[dict]) -> None:
    """Give ``layer`` (a class GeoTIFF) the class renderer and refresh its legend."""
    layer.setRenderer(class_renderer(layer, classes))
    layer.triggerRepaint()
    layer.emitStyleChanged()


def polygon_renderer(classes: Sequence[dict], field: str = "class_id") -> QgsCategorizedSymbolRenderer:
    """Categorized by class id: a light translucent fill and a darker outline of the class's display colour, so an
    object reads as an outlined shape even over the class raster drawn in the same colour."""
    categories = []
    for c in object_classes(classes):
        colour = display_color(c["id"])
        fill = QColor(colour)
        fill.setAlpha(POLYGON_FILL_ALPHA)
        symbol = QgsFillSymbol.createSimple({
            "color": ",".join(str(v) for v in fill.getRgb()),
            "outline_color": ",".join(str(v) for v in colour.darker(POLYGON_OUTLINE_DARKER).getRgb()),
            "outline_width": str(POLYGON_OUTLINE_MM)})
        categories.append(QgsRendererCategory(int(c["id"]), symbol, display_name(c["name"])))
    return QgsCategorizedSymbolRenderer(field, categories)


def style_polygon_layer(layer: QgsVectorLayer, classes: Sequence[dict]) -> None:
    """Give ``layer`` (the objects GeoPackage) the categorized renderer and refresh its legend."""
    layer.setRenderer(polygon_renderer(classes))
    layer.triggerRepaint()
    layer.emitStyleChanged()
