"""The engine adapter: the loaded model and the chunk plan, both from factseg_core, behind what the service needs.

The grid (plans, plan sizes, touching windows) is ``factseg_core.windows``'s and the defaults are
``factseg_core.config``'s; this module only calls them.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..client.protocol import PlanRequest, plan_rows
from .queue import Job


def device_hardware(device: str) -> dict[str, Any]:
    """What runs the model, by name: the GPU's model and memory, or the CPU's model name (``info``'s
    ``device_name`` and ``device_memory_bytes``, None where unknown), so users see whether their GPU is used."""
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        return {"device_name": str(props.name), "device_memory_bytes": int(props.total_memory)}
    return {"device_name": cpu_name(), "device_memory_bytes": None}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's word for it), with its core count."""
    import os
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "CPU"
    return f"{name} ({os.cpu_count() or '?'} logical cores)"


class Engine:
    """The model (loaded once) and its plans; anything shaped like this class can serve (tests, benchmarks)."""

    def __init__(self, model: str, backend: str = "torch", device: str = "auto", batch_size: int | None = None,
                 amp: str | None = None) -> None:
        import factseg_core
        from factseg_core.backends import make_runner

        self._core = factseg_core
        options = {"amp": amp} if amp else {}
        self.runner = make_runner(model, backend=backend, device=device, **options)
        self.amp = amp
        self.batch_size = int(batch_size or 4)
        self.backend = backend
        self.model_path = str(model)
        self._plan = functools.lru_cache(maxsize=32)(self._make_plan)

    def describe(self) -> dict[str, Any]:
        """The model part of ``info``: name, backbone, classes, its patch/stride defaults, device, backend."""
        from factseg_core import config

        meta = dict(getattr(self.runner, "model_info", {}) or {})
        classes = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in self.runner.classes]
        return {
            "model": str(meta.get("model") or "FactSeg"),
            "model_file": Path(self.model_path).name,
            "backbone": str(meta.get("backbone", "unknown")),
            "classes": classes,
            "patch": int(meta.get("patch", config.PATCH_SIZE)),
            "stride": int(meta.get("stride", config.STRIDE)),
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

    def plan_size(self, plan: PlanRequest) -> int:
        """Chunks in the plan of a resolved request, without building it."""
        from factseg_core.windows import plan_size

        return plan_size(plan.height, plan.width, plan.stride, plan.chunk_size)

    def plan(self, plan: PlanRequest) -> tuple[tuple[int, ...], ...]:
        """The plan of a resolved request, as wire rows (cached: every chunk of a job is checked against it)."""
        return self._plan(plan.height, plan.width, plan.patch, plan.stride, plan.chunk_size)

    def _make_plan(self, height: int, width: int, patch: int, stride: int, chunk_size: int) -> tuple[tuple[int, ...], ...]:
        from factseg_core.windows import plan_chunks

        chunks = plan_chunks(height, width, patch=patch, stride=stride, chunk_size=chunk_size)
        return tuple(tuple(row) for row in plan_rows(chunks))

    def count_batches(self, job: Job) -> int:
        """Forward passes a chunk needs at most (windows touching ``out``; all-nodata windows are skipped)."""
        from factseg_core.windows import Window, windows_touching

        windows = windows_touching(job.image_size, Window(*job.out), job.patch, job.stride)
        per_call = self._core.effective_batch_size(self.runner, self.batch_size)
        return max(1, math.ceil(windows / per_call))

    def predict(self, job: Job, should_stop: Any, on_batch: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (and confidence) of one chunk; ``should_stop()`` is polled before every batch."""
        from factseg_core.windows import Window

        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            job.batches_done = calls - 1  # polled before each batch: the previous ones are done
            if on_batch is not None and calls > 1:
                on_batch(job)
            return bool(should_stop())

        return self._core.predict_chunk(
            self.runner, job.pixels, job.valid, image_size=job.image_size, src=Window(*job.src),
            out=Window(*job.out), patch=job.patch, stride=job.stride, batch_size=self.batch_size, tta=job.tta,
            confidence=job.confidence, cancel=cancel,
        )

    @property
    def cancelled_error(self) -> type[BaseException]:
        return self._core.Cancelled
