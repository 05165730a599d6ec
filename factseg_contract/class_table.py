"""The class table: ``[{"id": 0, "name": "background", "color": [0, 0, 0]}, ...]``, one entry per output channel.

It travels in checkpoints (``classes``), in the worker's ``info``/``open`` replies, in class rasters, and in a
data root's ``classes.json`` (see :mod:`.layout`). Every reader checks it here, so a table is accepted or refused
alike everywhere, with one sentence naming the entry at fault:

- :func:`check_class_table`: any model's table (ids 0…n-1 in order, non-empty names, RGB colours 0–255);
- :func:`check_dataset_table`: a ``classes.json`` a model is trained on, which also needs exactly the keys id,
  name and color, at least two classes with ``background`` first, and unique names and colours (a mask pixel's
  colour must name one class).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_KEYS = ("id", "name", "color")


class ClassTableError(ValueError):
    """A class table that does not follow the format above; the message names the entry and the rule."""


def _entry_problem(item: Any, index: int) -> str | None:
    if not isinstance(item, Mapping):
        return f"is a {type(item).__name__}, expected {{id, name, color}}"
    missing = [k for k in _KEYS if k not in item]
    if missing:
        return f"has no {', '.join(missing)}"
    if type(item["id"]) is not int or item["id"] != index:
        return f"has id {item['id']!r}, expected {index} (ids are 0…n-1 in order)"
    if not isinstance(item["name"], str) or not item["name"].strip():
        return f"has name {item['name']!r}, expected a non-empty string"
    color = item["color"]
    if not (isinstance(color, list | tuple) and len(color) == 3
            and all(type(v) is int and 0 <= v <= 255 for v in color)):
        return f"has color {color!r}, expected three whole numbers 0–255"
    return None


def check_class_table(items: object, where: str = "class table:") -> list[dict[str, Any]]:
    """``items`` checked and copied as plain JSON data; otherwise a ClassTableError, ``where`` + the problem
    (``where``: e.g. ``"PATH:"`` or ``"PATH: 'classes'"``)."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, list | tuple):
        raise ClassTableError(f"{where} is a {type(items).__name__}, expected a list of {{id, name, color}} entries")
    if not items:
        raise ClassTableError(f"{where} is empty, expected at least one class")
    for index, item in enumerate(items):
        problem = _entry_problem(item, index)
        if problem:
            raise ClassTableError(f"{where} entry {index} {problem}")
    return [{"id": item["id"], "name": item["name"], "color": list(item["color"])} for item in items]


def check_dataset_table(items: object, where: str = "classes.json:") -> list[dict[str, Any]]:
    """A training set's table: :func:`check_class_table` plus the rules of ``classes.json`` (module docstring)."""
    table = check_class_table(items, where)
    if len(table) < 2:
        raise ClassTableError(f"{where} has {len(table)} class, expected at least two (background first)")
    extra = [index for index, item in enumerate(items) if set(item) != set(_KEYS)]  # type: ignore[arg-type]
    if extra:
        raise ClassTableError(f"{where} entry {extra[0]} must have exactly the keys id, name, color")
    if table[0]["name"] != "background":
        raise ClassTableError(f"{where} class 0 must be 'background', not {table[0]['name']!r}")
    for what, values in (("names", [c["name"] for c in table]), ("colours", [tuple(c["color"]) for c in table])):
        if len(set(values)) != len(values):
            raise ClassTableError(f"{where} class {what} must be unique")
    return table
