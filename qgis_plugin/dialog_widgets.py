"""Small widget and text helpers of the Segment Layer dialog."""
from __future__ import annotations

from collections.abc import Callable

from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle
from qgis.PyQt.QtCore import QEvent, QSize, Qt, QTimer
from qgis.PyQt.QtGui import QGuiApplication
from qgis.PyQt.QtWidgets import QFrame, QGroupBox, QLabel, QScrollArea, QSpinBox, QWidget

from .errors import FactSegError

Extent = tuple[QgsRectangle, QgsCoordinateReferenceSystem]


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


class Sections(QScrollArea):
    """The dialog's sections in a frameless area that scrolls vertically only: never narrower than they need."""

    def __init__(self, content: QWidget, refit: Callable[[], None]) -> None:
        """Args:
            content: the sections, in a vertical layout.
            refit: called once the content has its new width (after each resize), for wrapped labels to take
                the height their text needs at that width (see :func:`fit_wrapped_labels`).
        """
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        self._refit = refit
        self._refit_pending = False
        content.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt API)
        """The content is resized after the dialog's own resize event: its labels' widths are known only now."""
        if watched is self.widget() and event.type() == QEvent.Type.Resize and not self._refit_pending:
            self._refit_pending = True
            QTimer.singleShot(0, self._run_refit)
        return False

    def _run_refit(self) -> None:
        self._refit_pending = False
        self._refit()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """The whole content at its preferred width (a scroll area's own hint is a fixed 24 lines)."""
        content = self.widget()
        width = max(content.sizeHint().width(), content.minimumSizeHint().width())
        height = content.heightForWidth(width) if content.hasHeightForWidth() else -1
        return QSize(width + self.verticalScrollBar().sizeHint().width(),
                     height if height > 0 else content.sizeHint().height())


def fitted_size(hint: QSize, widget: QWidget, share: float = 0.9) -> QSize:
    """``hint`` bounded by ``share`` of the free area of the screen ``widget`` is on.

    The full dialog (guide, input, worker, legend, output) is taller than a 1080-pixel screen: beyond the screen
    its buttons were out of reach. Its sections scroll instead, and the window asks for no more than the screen.
    """
    screen = widget.screen() if hasattr(widget, "screen") else None
    screen = screen or QGuiApplication.primaryScreen()
    if screen is None:
        return hint
    free = screen.availableGeometry()
    return QSize(min(hint.width(), free.width()), min(hint.height(), int(free.height() * share)))


def chosen_extent(source: str, canvas, polygons, drawn: Extent | None) -> Extent | None:
    """The extent of an extent source ('layer', 'canvas', 'selection', 'drawn') and its CRS; None: the layer."""
    if source == "layer":
        return None
    if source == "canvas":
        if canvas is None:
            raise FactSegError("There is no map canvas to take the extent from.")
        return QgsRectangle(canvas.extent()), canvas.mapSettings().destinationCrs()
    if source == "selection":
        if polygons is None:
            raise FactSegError("Choose a polygon layer whose selected features give the extent.")
        if polygons.selectedFeatureCount() == 0:
            raise FactSegError(f"No features are selected in {polygons.name()!r}: select the areas to segment.")
        return polygons.boundingBoxOfSelected(), polygons.crs()
    if drawn is None:
        raise FactSegError("Draw a rectangle on the map first (Draw on map…).")
    return drawn


def note_label() -> QLabel:
    """A wrapped, hidden-until-needed line of advice (e.g. 'no georeferencing: areas are in pixels')."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet("color: #8a5a00")
    label.setVisible(False)
    return label


def fit_wrapped_labels(root: QWidget) -> None:
    """Give each visible word-wrapped label under ``root`` the height its text needs at its width.

    A top-level layout sizes the window from minimum sizes, which ignore height-for-width: a label that wraps to
    more lines than when the window was laid out is clipped, or overlaps the next row. The width is the label's
    own once laid out, else its size hint; a label without text has no height for width (-1), hence max(0, …).
    """
    for label in root.findChildren(QLabel):
        if label.wordWrap() and label.isVisibleTo(root):
            width = label.width() if label.width() > 50 else label.sizeHint().width()
            label.setMinimumHeight(max(0, label.heightForWidth(width)))
            holder = label.parentWidget()  # a composite row (e.g. the worker Python's): at least its content
            if holder is not None and holder is not root and holder.layout() is not None and \
                    not isinstance(holder, QGroupBox):
                holder.layout().invalidate()
                holder.setMinimumHeight(holder.layout().totalMinimumSize().height())
    if root.layout() is not None:
        root.layout().activate()
        need = root.layout().minimumSize()  # now with the labels' heights: grow a window that is too short for it
        if root.isWindow() and root.height() < need.height():
            root.resize(max(root.width(), need.width()), need.height())
