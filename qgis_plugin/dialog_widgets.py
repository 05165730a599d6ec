"""Small widget and text helpers of the Segment Layer dialog."""
from __future__ import annotations

from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
from qgis.PyQt.QtWidgets import QSpinBox, QWidget


def extent_text(rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> str:
    """An extent as Processing reads it: 'xmin,xmax,ymin,ymax [AUTHID]', full precision."""
    values = (rectangle.xMinimum(), rectangle.xMaximum(), rectangle.yMinimum(), rectangle.yMaximum())
    text = ",".join(repr(float(v)) for v in values)
    return f"{text} [{crs.authid()}]" if crs.isValid() and crs.authid() else text


def spin(low: int, high: int, tip: str) -> QSpinBox:
    """An integer spin box with its range and tool tip."""
    box = QSpinBox()
    box.setRange(low, high)
    box.setToolTip(tip)
    return box


def wrap(layout) -> QWidget:
    """A widget holding ``layout`` without margins (for a form row of several widgets)."""
    widget = QWidget()
    layout.setContentsMargins(0, 0, 0, 0)
    widget.setLayout(layout)
    return widget
