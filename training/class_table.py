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

from factseg_core.classes import ClassInfo, classes_from_dicts, classes_to_dicts

from .isaid import DataError

CLASSES_FILE = "classes.json"
_KEYS = {"id", "name", "color"}


class ClassTableError(DataError):
    """A ``classes.json`` that does not follow the format above."""


def parse_class_table(items: object, source: str = CLASSES_FILE) -> tuple[ClassInfo, ...]:
    """Check plain data in the ``classes.json`` format and return the class table."""
    if not isinstance(items, list) or len(items) < 2:
        raise ClassTableError(f"{source}: expected a list of at least two classes (background first)")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != _KEYS:
            raise ClassTableError(f"{source}: entry {index} must be an object with exactly the keys id, name, color")
        if not isinstance(item["name"], str) or not item["name"].strip():
            raise ClassTableError(f"{source}: entry {index} has no name")
        color = item["color"]
        if not isinstance(color, list) or len(color) != 3 or not all(isinstance(v, int) for v in color):
            raise ClassTableError(f"{source}: colour of {item['name']!r} must be [r, g, b] integers")
        if not isinstance(item["id"], int) or isinstance(item["id"], bool):
            raise ClassTableError(f"{source}: id of {item['name']!r} must be an integer")
    try:
        classes = classes_from_dicts(items)
    except ValueError as exc:
        raise ClassTableError(f"{source}: {exc}") from None
    if classes[0].name != "background":
        raise ClassTableError(f"{source}: class 0 must be 'background', not {classes[0].name!r}")
    for what, values in (("names", [c.name for c in classes]), ("colours", [c.color for c in classes])):
        if len(set(values)) != len(values):
            raise ClassTableError(f"{source}: class {what} must be unique")
    return classes


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
