"""The one engine adapter of the worker: the model loaded once, and factseg_core's chunk grid and chunk prediction,
behind what both the ZeroMQ service (``worker.server``) and the Dask batch (``worker.batch``) need. Both therefore
plan, batch and decide every pixel the same way, and the defaults are the shared contract's.

The grid (plans, plan sizes, touching windows) is ``factseg_core.windows``'s; this module only calls it. It is the
only ``worker`` module that loads a model (never imported inside QGIS).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import factseg_core
from factseg_core.runners import make_runner
from factseg_core.windows import Window, plan_chunks, plan_size, windows_touching

from .client.protocol import PlannedChunk, plan_rows
from .contract import BATCH_SIZE, PATCH_SIZE, STRIDE
from .hardware import device_hardware

__all__ = ["Engine", "chunk_plan", "chunk_plan_rows"]


@functools.lru_cache(maxsize=32)
def chunk_plan_rows(height: int, width: int, patch: int, stride: int, chunk_size: int) -> tuple[tuple[int, ...], ...]:
    """The chunks of a ``height``×``width`` raster as wire rows (cached: every chunk of a job is checked against
    it); ValueError in the engine's words for a patch/stride it refuses."""
    chunks = plan_chunks(height, width, patch=patch, stride=stride, chunk_size=chunk_size)
    return tuple(tuple(row) for row in plan_rows(chunks))


def chunk_plan(height: int, width: int, patch: int, stride: int, chunk_size: int) -> list[PlannedChunk]:
    """The same plan as :class:`~worker.client.protocol.PlannedChunk` entries (what the batch schedules)."""
    return [PlannedChunk(row[0], tuple(row[1:5]), tuple(row[5:9]))  # type: ignore[arg-type]
            for row in chunk_plan_rows(height, width, patch, stride, chunk_size)]


class Engine:
    """The model (loaded once) and its plans; anything shaped like this class can serve (tests, benchmarks)."""

    def __init__(self, model: str, backend: str = "torch", device: str = "auto", batch_size: int | None = None,
                 amp: str | None = None) -> None:
        options = {"amp": amp} if amp else {}
        self.runner = make_runner(model, backend=backend, device=device, **options)
        self.amp = amp
        self.batch_size = int(batch_size or BATCH_SIZE)
        self.backend = backend
        self.model_path = str(model)

    def describe(self) -> dict[str, Any]:
        """The model part of ``info``: name, backbone, classes, its patch/stride defaults, device, backend."""
        meta = dict(getattr(self.runner, "model_info", {}) or {})
        classes = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in self.runner.classes]
        return {
            "model": str(meta.get("model") or "FactSeg"),
            "model_file": Path(self.model_path).name,
            "backbone": str(meta.get("backbone", "unknown")),
            "classes": classes,
            "patch": int(meta.get("patch") or PATCH_SIZE),
            "stride": int(meta.get("stride") or STRIDE),
            "device": str(self.runner.device),
            **device_hardware(str(self.runner.device)),
            "backend": str(getattr(self.runner, "name", self.backend)),
            "batch_size": self.batch_size,
            "amp": self.amp,
            "precision": str(getattr(self.runner, "precision", "fp32")),
            "model_card": getattr(self.runner, "model_card", None),
            **self.live(),
        }

    def live(self) -> dict[str, Any]:
        """What changes while serving: the batch the runner settled on after an out-of-memory back-off."""
        return {"max_batch": self.runner.max_batch}

    def plan_size(self, plan: Any) -> int:
        """Chunks in the plan of a resolved request (height, width, stride, chunk_size), without building it."""
        return plan_size(plan.height, plan.width, plan.stride, plan.chunk_size)

    def plan(self, plan: Any) -> tuple[tuple[int, ...], ...]:
        """The plan of a resolved request (height, width, patch, stride, chunk_size), as wire rows."""
        return chunk_plan_rows(plan.height, plan.width, plan.patch, plan.stride, plan.chunk_size)

    def count_batches(self, job: Any) -> int:
        """Forward passes a chunk needs at most (windows touching ``out``; all-nodata windows are skipped)."""
        windows = windows_touching(job.image_size, Window(*job.out), job.patch, job.stride)
        per_call = factseg_core.effective_batch_size(self.runner, self.batch_size)
        return max(1, math.ceil(windows / per_call))

    def predict_chunk(self, pixels: np.ndarray, valid: np.ndarray | None, image_size: tuple[int, int],
                      src: tuple[int, int, int, int], out: tuple[int, int, int, int], patch: int, stride: int,
                      tta: bool = False, confidence: bool = False, cancel: Callable[[], bool] | None = None,
                      batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (uint8, nodata where ``valid`` is False) and optional confidence of the ``out`` window of one
        chunk from the pixels of its ``src`` window; ``cancel()`` is polled before every batch. ``batch_size``:
        windows per forward pass for this chunk (default: the engine's)."""
        return factseg_core.predict_chunk(
            self.runner, pixels, valid, image_size=image_size, src=Window(*src), out=Window(*out), patch=patch,
            stride=stride, batch_size=batch_size or self.batch_size, tta=tta, confidence=confidence, cancel=cancel)

    def predict(self, job: Any, should_stop: Any, on_batch: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (and confidence) of one queued chunk of the service; ``should_stop()`` is polled before every
        batch and ``on_batch(job)`` told of each finished one."""
        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            job.batches_done = calls - 1  # polled before each batch: the previous ones are done
            if on_batch is not None and calls > 1:
                on_batch(job)
            return bool(should_stop())

        return self.predict_chunk(job.pixels, job.valid, job.image_size, job.src, job.out, job.patch, job.stride,
                                  job.tta, job.confidence, cancel)

    @property
    def cancelled_error(self) -> type[BaseException]:
        return factseg_core.Cancelled
