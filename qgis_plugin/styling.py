"""Class layers as analysts expect them: a paletted renderer with the model's class names and colours.

The names and colours come from the worker's ``info`` reply (or the class table stored in the GeoTIFF), so a
retrained model with other classes is styled right without code changes. Nodata (255) stays transparent.
"""
from __future__ import annotations

from collections.abc import Sequence

from qgis.core import QgsPalettedRasterRenderer, QgsRasterLayer
from qgis.PyQt.QtGui import QColor


def class_entries(classes: Sequence[dict]) -> list[QgsPalettedRasterRenderer.Class]:
    """One renderer class per model class: value = class id, colour, label = readable name."""
    return [
        QgsPalettedRasterRenderer.Class(int(c["id"]), QColor(*[int(v) for v in c["color"]]), display_name(c["name"]))
        for c in classes
    ]


def display_name(name: str) -> str:
    """'small_vehicle' → 'small vehicle' (labels in the legend read as words)."""
    return str(name).replace("_", " ")


def class_renderer(layer: QgsRasterLayer, classes: Sequence[dict]) -> QgsPalettedRasterRenderer:
    """A paletted renderer on band 1 of ``layer`` for ``classes``."""
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, class_entries(classes))


def style_class_layer(layer: QgsRasterLayer, classes: Sequence[dict]) -> None:
    """Give ``layer`` (a class GeoTIFF) the class renderer and refresh its legend."""
    layer.setRenderer(class_renderer(layer, classes))
    layer.triggerRepaint()
    layer.emitStyleChanged()
