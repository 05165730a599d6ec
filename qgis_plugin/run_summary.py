"""After a run of the dialog: the summary stays in the message bar (not hidden behind QGIS's "Task complete"),
with a *Details* button that opens the per-class table; the table also goes to the FactSeg log panel. A model
file is remembered as the next default only once a run with it succeeded.
"""
from __future__ import annotations

import json

from qgis.core import Qgis, QgsMessageLog, QgsRasterLayer, QgsSettings
from qgis.gui import QgsMessageBar, QgsMessageBarItem
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

from .first_run import hide_guide_for_good
from .results_report import BACKGROUND_ID, is_georeferenced, present, table_html, table_lines
from .settings import SETTINGS_GROUP

LOG_TAG = "FactSeg"
TITLE = "FactSeg finished"


def remember_model(parameters: dict) -> None:
    """A local run succeeded: its model becomes the dialog's default (a failed one never does)."""
    model = parameters.get("MODEL")
    if isinstance(model, str) and model and not parameters.get("WORKER"):
        QgsSettings().setValue(f"{SETTINGS_GROUP}/model_path", model)


def _statistics(results: dict) -> list[dict]:
    try:
        return list(json.loads(results.get("STATISTICS") or "[]"))
    except (TypeError, ValueError):
        return []


def bar_text(summary: str, statistics: list[dict]) -> str:
    """Short enough to read whole in the message bar: the run and the share of each object class found (areas
    and background in Details)."""
    found = [s for s in present(statistics) if int(s["id"]) != BACKGROUND_ID]
    shares = ", ".join(f"{str(s['name']).replace('_', ' ')} {_percent(s['share'])}" for s in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"{summary.split('. ', 1)[0]}. Found: {shares or 'no objects'}{more}."


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %" if share >= 0.001 else "< 0.1 %"


def show_summary(message_bar: QgsMessageBar | None, text: str, results: dict, layer) -> QgsMessageBarItem | None:
    """Log the per-class table and push the summary with a *Details* button; returns the message bar item."""
    hide_guide_for_good()  # the first-run guide has done its job
    statistics = _statistics(results)
    georeferenced = is_georeferenced(layer) if isinstance(layer, QgsRasterLayer) else True
    for line in ["Classes found:", *table_lines(statistics, georeferenced)]:
        QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info)
    if message_bar is None:
        return None
    item = QgsMessageBar.createMessage(TITLE, bar_text(text, statistics))
    button = QPushButton("Details…")
    button.setObjectName("factsegSummaryDetails")
    button.setToolTip("The area and share of each class found")
    item.details_html = f"<p>{text.split('. ', 1)[0]}.</p>{table_html(statistics, georeferenced)}"
    button.clicked.connect(lambda _checked=False: _show_details(item))
    item.layout().addWidget(button)
    item.setLevel(Qgis.MessageLevel.Success)
    message_bar.pushItem(item)  # no timeout: it stays until the analyst closes it
    return item


def _show_details(item: QgsMessageBarItem) -> QMessageBox:
    box = QMessageBox(QMessageBox.Icon.Information, TITLE, item.details_html, QMessageBox.StandardButton.Close,
                      item.window())
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setModal(False)
    box.setObjectName("factsegSummaryTable")
    box.show()
    item.details_box = box  # a Python reference keeps it open
    return box
