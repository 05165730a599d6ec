"""The Segment Layer dialog's first-run guide: where a model comes from and how a worker starts.

A newcomer meets the dialog on a default endpoint with nothing running behind it. The guide, at the top of the
dialog until it is hidden or a run succeeded, says in three steps what to do: get a model (the FactSeg authors'
released weights, or this project's demo model when ``make demo`` has trained one), start a local worker with it
(*Set up worker…* makes a worker Python that has torch), or connect to a worker already running.
"""
from __future__ import annotations

import os
from pathlib import Path

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QFrame, QLabel, QWidget

from .settings import SETTINGS_GROUP, plugin_root
from .worker_import import contract

WEIGHTS_URL = "https://github.com/Junjue-Wang/FactSeg"
DEMO_MODEL = Path("demo_data") / "model" / "final.pt"  # where scripts/demo.py (make demo) trains it
HIDDEN_KEY = f"{SETTINGS_GROUP}/guide_hidden"
DEMO_LINK, HIDE_LINK = "factseg:demo", "factseg:hide"


def demo_model() -> Path | None:
    """The demo model, if ``make demo`` made one: $FACTSEG_DEMO_MODEL, else demo_data/model/final.pt beside the
    plugin's code (a repository checkout)."""
    for candidate in (os.environ.get("FACTSEG_DEMO_MODEL", ""), str(plugin_root() / DEMO_MODEL)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def guide_wanted() -> bool:
    """Whether the guide still shows: until hidden with its link, or a run succeeded."""
    return str(QgsSettings().value(HIDDEN_KEY, False)).lower() not in ("true", "1")


def hide_guide_for_good() -> None:
    QgsSettings().setValue(HIDDEN_KEY, True)


def guide_html(demo: Path | None) -> str:
    offer = (f" — or <a href='{DEMO_LINK}'>use the demo model</a> that <code>make demo</code> trained "
             f"({demo.name}, synthetic scenes only)" if demo is not None else "")
    return (
        "<b>Getting started</b><br>"
        "1. <b>A model.</b> The FactSeg authors' trained weights (<code>factseg50.pth</code>, iSAID) are linked "
        f"from their <a href='{WEIGHTS_URL}'>GitHub page</a> (README: <i>download pretrained weight</i>){offer}.<br>"
        "2. <b>A worker.</b> Choose <i>Start a local worker</i> with that model file; if the worker Python lacks "
        "torch, press <i>Set up worker…</i> (it makes one).<br>"
        "3. <b>Or connect</b> to a worker already running: "
        f"<code>python -m worker --bind {contract.DEFAULT_ENDPOINT} --model MODEL</code>. "
        f"<a href='{HIDE_LINK}'>Hide this guide</a>")


class FirstRunGuide(QLabel):
    """The guide as a wrapped rich-text label; ``use_model`` asks the dialog to start a local worker with a model."""

    use_model = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("factsegFirstRunGuide")
        self.demo = demo_model()
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setWordWrap(True)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMargin(6)
        self.setOpenExternalLinks(False)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse)
        self.setText(guide_html(self.demo))
        self.linkActivated.connect(self.follow)
        self.setVisible(guide_wanted())

    def follow(self, link: str) -> None:
        """A link: the demo model, hide the guide, or a web page (the system's browser)."""
        if link == DEMO_LINK and self.demo is not None:
            self.use_model.emit(str(self.demo))
        elif link == HIDE_LINK:
            hide_guide_for_good()
            self.hide()
        elif link.startswith("https://"):
            QDesktopServices.openUrl(QUrl(link))
