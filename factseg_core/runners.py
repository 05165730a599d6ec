"""``make_runner``: the one entry point from a weight file to a window runner, for every backend and precision.

It sits above :mod:`.backends` (the torch and onnxruntime runners) and :mod:`.precision` (measured precision
choices, int8 through :mod:`.quantize`), so neither of those needs the other's caller: no import cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends import build_runner
from .engine import WindowRunner
from .precision import precision_runner


def make_runner(model_path: str | Path, backend: str = "torch", device: str = "auto", **options: Any) -> WindowRunner:
    """A runner for a weight file: ``torch`` loads our checkpoint or the released factseg50.pth, ``onnx`` an export.

    ``options`` go to the runner (torch: amp, channels_last; onnx: threads). Both runners expose ``classes``
    and ``model_info``. ``precision`` (fp32, bf16, fp16, int8, auto) is resolved by
    :func:`factseg_core.precision.precision_runner`: int8 runs the cached quantized ONNX of the model.
    """
    precision = options.pop("precision", None)
    if precision not in (None, "fp32"):
        return precision_runner(model_path, precision, backend=backend, device=device, **options)
    return build_runner(model_path, backend=backend, device=device, **options)


__all__ = ["make_runner"]
