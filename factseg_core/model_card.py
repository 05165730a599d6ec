"""The model card: what a model knows about the data it learnt from, as plain JSON-able data.

FactSeg learns object sizes in pixels, so a model is only right at about the ground sample distance it was
trained at. The card travels with every model we write (checkpoint key ``model_card``, ONNX metadata
``model_card``), the worker reports it in ``info``/``open``, and the plugin takes the default output resolution
from its ``gsd_m``. Fields::

    gsd_m          metres per pixel of the training data, or None (unknown: iSAID mixes resolutions)
    classes        [{"id", "name", "color"}, ...], the model's class table
    bands          roles of the input channels, in order: ["red", "green", "blue"]
    normalization  {"mean": [...], "std": [...]} applied to 0..255 inputs
    patch, stride  the sliding-window size and step the model was evaluated with (pixels)
    trained_on     {"tiles": {...}, "area_m2": ..., "class_shares": {...}, ...} or None
    metrics        {"split", "iou": {name: IoU}, "miou"} of the last evaluation, or None
    created        ISO 8601 UTC time the card was written, or None

Checkpoints are read with ``torch.load(weights_only=True)``, so the card holds only dicts, lists, strings,
numbers, booleans and None. A checkpoint without a card (the released ``factseg50.pth``, our older ones) gets one
derived from what is known (its classes, the reference normalisation and windows) with ``gsd_m`` None.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .classes import ClassInfo, classes_to_dicts
from .config import MEAN, PATCH_SIZE, STD, STRIDE

CARD_KEY = "model_card"
FIELDS = ("gsd_m", "classes", "bands", "normalization", "patch", "stride", "trained_on", "metrics", "created")
DEFAULT_BANDS = ("red", "green", "blue")
#: Largest serialised card accepted (a card is a few kB; bounds what a peer or a file can make us hold).
MAX_CARD_BYTES = 256 * 1024


class ModelCardError(ValueError):
    """A card (or a value for one of its fields) that is not what the format says; the message says why."""


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. ``2026-12-03T10:30:00Z``."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def derived_card(classes: Sequence[ClassInfo] | Sequence[Mapping[str, Any]], patch: int = PATCH_SIZE,
                 stride: int = STRIDE) -> dict[str, Any]:
    """The card of a model that carries none: what its checkpoint and the reference recipe tell, gsd_m unknown."""
    return {
        "gsd_m": None,
        "classes": _class_dicts(classes),
        "bands": list(DEFAULT_BANDS),
        "normalization": {"mean": [float(v) for v in MEAN], "std": [float(v) for v in STD]},
        "patch": int(patch),
        "stride": int(stride),
        "trained_on": None,
        "metrics": None,
        "created": None,
    }


def build_card(classes: Sequence[ClassInfo] | Sequence[Mapping[str, Any]], *, gsd_m: float | None, patch: int,
               stride: int, trained_on: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
               created: str | None = None) -> dict[str, Any]:
    """A card written by training: the derived fields plus what the training run knows."""
    card = derived_card(classes, patch, stride)
    card.update(gsd_m=gsd_m, trained_on=dict(trained_on) if trained_on else None,
                metrics=dict(metrics) if metrics else None, created=created or utc_now())
    return check_card(card)


def card_from_checkpoint(ckpt: Mapping[str, Any], classes: Sequence[ClassInfo], source: str = "checkpoint") -> dict:
    """The checkpoint's card (checked), or one derived from its classes; the class table is the checkpoint's.

    Fields an older card lacks are filled in from the derived card, so every reader sees every field.
    """
    stored = ckpt.get(CARD_KEY)
    derived = derived_card(classes)
    if stored is None:
        return derived
    if not isinstance(stored, Mapping):
        raise ModelCardError(f"{source}: '{CARD_KEY}' is a {type(stored).__name__}, expected a mapping")
    card = {**derived, **{str(k): v for k, v in stored.items()}, "classes": derived["classes"]}
    try:
        return check_card(card)
    except ModelCardError as exc:
        raise ModelCardError(f"{source}: {exc}") from None


def check_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of ``card`` after checking every known field's type; unknown fields are kept."""
    card = dict(card)
    missing = [k for k in FIELDS if k not in card]
    if missing:
        raise ModelCardError(f"the model card lacks {', '.join(missing)}")
    for key in FIELDS:
        card[key] = check_field(key, card[key])
    try:
        text = json.dumps(card, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"the model card is not plain JSON data ({exc})") from None
    if len(text) > MAX_CARD_BYTES:
        raise ModelCardError(f"the model card is {len(text)} bytes, more than {MAX_CARD_BYTES}")
    return json.loads(text)  # a copy of plain types only (tuples become lists)


def check_field(key: str, value: Any) -> Any:
    """``value`` if it suits field ``key`` (numbers normalised), else a ModelCardError naming the field."""
    if key == "gsd_m":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ModelCardError(f"gsd_m must be a positive number of metres per pixel or null, got {value!r}")
        return float(value)
    if key in ("patch", "stride"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelCardError(f"{key} must be a positive whole number of pixels, got {value!r}")
        return value
    if key == "bands":
        if not isinstance(value, list | tuple) or not value or not all(isinstance(b, str) and b for b in value):
            raise ModelCardError(f"bands must be a list of band roles such as [\"red\", \"green\", \"blue\"], got "
                                 f"{value!r}")
        return list(value)
    if key == "normalization":
        if not (isinstance(value, Mapping) and all(_numbers(value.get(k)) for k in ("mean", "std"))):
            raise ModelCardError(f"normalization must be {{\"mean\": [numbers], \"std\": [numbers]}}, got {value!r}")
        return dict(value)
    if key == "classes":
        if not isinstance(value, list | tuple) or not all(isinstance(c, Mapping) for c in value):
            raise ModelCardError("classes must be a list of {id, name, color}")
        return list(value)
    if key in ("trained_on", "metrics"):
        if value is not None and not isinstance(value, Mapping):
            raise ModelCardError(f"{key} must be an object or null, got {value!r}")
        return value
    if key == "created":
        if value is not None and not isinstance(value, str):
            raise ModelCardError(f"created must be an ISO 8601 time text or null, got {value!r}")
        return value
    return value


def parse_value(key: str, text: str) -> Any:
    """The typed value of ``KEY=TEXT`` from a command line: JSON where it parses (0.5, null, [..], {..}), else
    the text itself; then checked for the field (``gsd_m=0.5`` is a float, ``gsd_m=null`` clears it)."""
    if key == "classes":
        raise ModelCardError("classes come from the model's own class table and cannot be set on the card")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if key in ("gsd_m",) and isinstance(value, str) and value.strip().lower() in ("none", ""):
        value = None
    return check_field(key, value)


def _numbers(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def _class_dicts(classes: Sequence[ClassInfo] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if classes and isinstance(classes[0], ClassInfo):
        return classes_to_dicts(classes)  # type: ignore[arg-type]
    return [{"id": int(c["id"]), "name": str(c["name"]), "color": [int(v) for v in c["color"]]} for c in classes]


__all__ = ["CARD_KEY", "FIELDS", "ModelCardError", "build_card", "card_from_checkpoint", "check_card", "check_field",
           "derived_card", "parse_value", "utc_now"]
