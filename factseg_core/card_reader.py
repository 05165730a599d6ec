"""Reading the model card of a model file, whatever its kind (above the checkpoint and ONNX readers, so no cycle)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .backends import onnx_card, read_onnx_metadata
from .checkpoint import CheckpointError, load_model
from .classes import classes_from_dicts


def read_model_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card of a model file: our checkpoint, the released weights (derived card) or an ONNX export.

    The plugin's dialog runs this in the local worker's Python (which has torch) to learn a model's ``gsd_m``.
    """
    if str(path).lower().endswith(".onnx"):
        meta = read_onnx_metadata(path)
        if not meta:
            raise CheckpointError(f"{path} has no FactSeg metadata: export it with training/export_onnx.py")
        return onnx_card(meta, classes_from_dicts(meta["classes"]), Path(path))
    return dict(load_model(path, "cpu").model_card)
