"""``classes.json``: the class table of a dataset of one's own classes, beside its ``train``/``val`` folders.

Format (written by the Processing export ``factseg:export_training_data``; read here)::

    [
      {"id": 0, "name": "background", "color": [0, 0, 0]},
      {"id": 1, "name": "vehicle",    "color": [230, 25, 75]},
      ...
    ]

A JSON list of objects with exactly the keys ``id`` (0, 1, 2, … in order: the model's output channel),
``name`` (non-empty, unique) and ``color`` ([r, g, b], bytes, unique: the colour that marks the class in
``*_instance_color_RGB.png`` masks). Entry 0 is ``background``. Mask pixels of any other colour are ignored
(label 255), like the outside of the labelled area. Without a ``classes.json`` a data root is iSAID (the
16-class table of :data:`factseg_core.ISAID_CLASSES`).

The table travels in every checkpoint trained on it, so the worker reports its names and colours in
``info``, the plugin styles with them, and ``evaluate.py`` prints them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from factseg_contract import CLASSES_FILE, ClassTableError, check_dataset_table
from factseg_core.classes import ClassInfo, classes_from_dicts, classes_to_dicts


def parse_class_table(items: object, source: str = CLASSES_FILE) -> tuple[ClassInfo, ...]:
    """Check plain data in the ``classes.json`` format (the shared contract's rule) and return the class table."""
    return classes_from_dicts(check_dataset_table(items, f"{source}:"))


def read_class_table(data_root: str | os.PathLike) -> tuple[ClassInfo, ...] | None:
    """The table in ``DATA_ROOT/classes.json``, or None when the data root has none (iSAID)."""
    path = Path(data_root) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClassTableError(f"{path}: cannot read it as JSON ({exc})") from None
    return parse_class_table(items, str(path))


def write_class_table(data_root: str | os.PathLike, classes: Sequence[ClassInfo]) -> Path:
    """Write ``DATA_ROOT/classes.json`` (checked first, so what is written can be read back)."""
    items = classes_to_dicts(classes)
    parse_class_table(items, CLASSES_FILE)
    path = Path(data_root) / CLASSES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    return path
