"""A local model's card, read in the worker's Python (torch lives there, never in QGIS's) off the GUI thread.

The Segment Layer dialog learns a remote model's ``gsd_m`` from *Check worker*; for a local worker it has only the
model file, so it asks the worker Python to read the card (:func:`factseg_core.card_reader.read_model_card`) in a
subprocess with a timeout, as a :class:`QgsTask`.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .errors import FactSegError
from .settings import plugin_root

READ_TIMEOUT_S = 90.0  # importing torch from a cold disk can take tens of seconds
_MARK = "FACTSEG-CARD "
_SCRIPT = ("import json, sys\nfrom factseg_core.card_reader import read_model_card\n"
           f"print({_MARK!r} + json.dumps(read_model_card(sys.argv[1])))\n")


def read_card(python: str, model: str, timeout_s: float = READ_TIMEOUT_S) -> dict:
    """The card of ``model`` as ``python`` (a worker Python) reads it; FactSegError in one sentence otherwise."""
    if not python or not model or not Path(model).is_file():
        raise FactSegError("Choose a worker Python and an existing model file to read the model's card.")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}  # QGIS's Python home breaks another Python
    env["PYTHONPATH"] = str(plugin_root())
    try:
        done = subprocess.run([python, "-c", _SCRIPT, model], capture_output=True, text=True, timeout=timeout_s,
                              env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FactSegError(f"Could not read the card of {model} with {python}: {exc}") from exc
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            card = json.loads(line[len(_MARK):])
            if isinstance(card, dict):
                return card
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise FactSegError(f"Could not read the card of {model} with {python}: {last}")


class ReadCardTask(QgsTask):
    """:func:`read_card` as a QgsTask; ``read`` delivers ``(card or None, message)`` on the main thread."""

    read = pyqtSignal(object, str)

    def __init__(self, python: str, model: str) -> None:
        super().__init__("Read the FactSeg model card", QgsTask.Flag.CanCancel)
        self.python, self.model = python, model
        self.card: dict | None = None
        self.message = ""

    def run(self) -> bool:
        try:
            self.card = read_card(self.python, self.model)
        except FactSegError as exc:
            self.message = str(exc)
        return self.card is not None

    def finished(self, result: bool) -> None:
        self.read.emit(self.card, self.message)
