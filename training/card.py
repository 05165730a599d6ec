"""The model card of a training run (see :mod:`factseg_core.model_card`): what the data root tells about the
data (``export.json`` of ``factseg:export_training_data``: ground sample distance, tiles, area, class shares) and
what the final evaluation measured.

A data root without ``export.json`` (iSAID, ``training.synthetic``) gives a card with ``gsd_m`` None and the
tile counts of its folders; set the resolution afterwards with ``python -m training.model_card --set``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from factseg_contract.layout import EXPORT_FILE, IMAGES_DIR, SPLITS
from factseg_core.classes import ClassInfo
from factseg_core.model_card import ModelCardError, build_card, check_field

from .errors import DataError

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def read_export(data_root: str | os.PathLike) -> dict[str, Any] | None:
    """``DATA_ROOT/export.json`` as a dict, or None when the data root has none."""
    path = Path(data_root) / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def trained_on(data_root: str | os.PathLike, export: Mapping[str, Any] | None, gsd_m: float | None) -> dict:
    """Tiles per split, labelled ground area (m², where the resolution is known) and class shares of training."""
    root = Path(data_root)
    tiles = dict(export.get("tiles_per_split") or {}) if export else {}
    if not tiles:
        tiles = {split: _count_images(root / split / IMAGES_DIR) for split in SPLITS
                 if (root / split / IMAGES_DIR).is_dir()}
    pixels = (export or {}).get("class_pixels") or {}
    train = {str(k): int(v) for k, v in (pixels.get("train") or {}).items()}
    labelled = sum(sum(int(v) for v in split.values()) for split in pixels.values() if isinstance(split, Mapping))
    total = sum(train.values())
    return {
        "data": root.name,
        "source": (export or {}).get("source"),
        "tiles": tiles,
        "area_m2": round(labelled * gsd_m * gsd_m, 3) if gsd_m and labelled else None,
        "class_shares": {name: round(n / total, 6) for name, n in train.items()} if total else None,
    }


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def training_card(data_root: str | os.PathLike, classes: Sequence[ClassInfo], patch: int, stride: int) -> dict:
    """The card a run starts with (metrics come with the final evaluation: :func:`with_metrics`)."""
    export = read_export(data_root)
    gsd = export.get("gsd_m") if export else None
    try:
        gsd = check_field("gsd_m", gsd)
    except ModelCardError as exc:
        raise DataError(f"{Path(data_root) / EXPORT_FILE}: {exc}") from None
    return build_card(classes, gsd_m=gsd, patch=patch, stride=stride, trained_on=trained_on(data_root, export, gsd))


def with_metrics(card: Mapping[str, Any], metrics: Mapping[str, Any], split: str) -> dict:
    """The card with the per-class IoU and mIoU of an evaluation (``training.evaluate.summarize``'s dict)."""
    iou = {row["name"]: row["iou"] for row in metrics.get("per_class", [])}
    return {**card, "metrics": {"split": split, "iou": iou, "miou": metrics.get("miou"),
                                "fg_miou": metrics.get("fg_miou")}}


__all__ = ["EXPORT_FILE", "read_export", "trained_on", "training_card", "with_metrics"]
