"""The engine as worker.batch uses it: the chunk plan, the runner and one chunk's prediction.

This is the only module of worker.batch that imports factseg_core, so that the engine's names (the grid moving
into ``factseg_core.windows``) are followed in one place. The defaults are the ZeroMQ worker's, so that a batch
run and ``python -m worker.segment`` through one worker decide every pixel the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from factseg_core import make_runner, predict_chunk
from factseg_core.config import CHUNK_SIZE, NODATA_CLASS, PATCH_SIZE, STRIDE
from factseg_core.windows import Window, plan_chunks

from ..client import PlannedChunk

#: Windows per forward pass: the ZeroMQ worker's default (``worker.server.service.Engine``).
BATCH_SIZE = 4

__all__ = ["BATCH_SIZE", "CHUNK_SIZE", "NODATA_CLASS", "PATCH_SIZE", "STRIDE", "PlannedChunk", "describe_runner",
           "load_runner", "plan", "predict"]


def plan(height: int, width: int, patch: int, stride: int, chunk_size: int) -> list[PlannedChunk]:
    """The chunks of a ``height``×``width`` raster, exactly as the ZeroMQ worker plans them."""
    return [
        PlannedChunk(c.index, (c.out.y0, c.out.x0, c.out.y1, c.out.x1), (c.src.y0, c.src.x0, c.src.y1, c.src.x1))
        for c in plan_chunks(height, width, patch=patch, stride=stride, chunk_size=chunk_size)
    ]


def load_runner(model_path: str, backend: str = "torch", device: str = "auto") -> Any:
    """The model behind a runner (torch checkpoint or ONNX), loaded once per Dask worker."""
    return make_runner(model_path, backend=backend, device=device)


def describe_runner(runner: Any) -> dict[str, Any]:
    """Class table (id, name, colour) and the model's default patch/stride, as the worker's ``info`` gives them."""
    meta = dict(getattr(runner, "model_info", {}) or {})
    classes = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in runner.classes]
    return {
        "classes": classes,
        "patch": int(meta.get("patch") or PATCH_SIZE),
        "stride": int(meta.get("stride") or STRIDE),
        "backbone": str(meta.get("backbone", "unknown")),
        "device": str(runner.device),
        "backend": str(getattr(runner, "name", "torch")),
    }


def predict(runner: Any, pixels: np.ndarray, valid: np.ndarray | None, image_size: tuple[int, int],
            chunk: PlannedChunk, patch: int, stride: int, batch_size: int, tta: bool,
            confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Classes (uint8, 255 = nodata) and optional confidence of ``chunk`` from the pixels of its source window."""
    return predict_chunk(runner, pixels, valid, image_size=image_size, src=Window(*chunk.src),
                         out=Window(*chunk.out), patch=patch, stride=stride, batch_size=batch_size, tta=tta,
                         confidence=confidence)
