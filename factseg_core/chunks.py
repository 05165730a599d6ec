"""One independent rectangle of a raster, decided exactly: what a stateless worker serves.

:func:`predict_chunk` computes the pixels of ``out`` from the input pixels of ``src`` (all grid windows that
touch ``out``, :func:`factseg_core.windows.source_window`). Chunks are independent, so any worker can serve
any of them; :func:`factseg_core.windows.plan_chunks` tiles an image into such chunks (each cut costs one
duplicated row/column of windows), and stitching their classes gives the argmax of ``sliding_predict``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import BATCH_SIZE, PATCH_SIZE, STRIDE
from .engine import WindowEngine, WindowRunner, check_pixels, fill_nodata
from .windows import Window, check_inside, coverage, source_window, touching_windows


@torch.inference_mode()
def predict_chunk(
    runner: WindowRunner,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    image_size: tuple[int, int],
    src: Window,
    out: Window,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = BATCH_SIZE,
    tta: bool = False,
    confidence: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class ids (out.height×out.width uint8, nodata where invalid) and optional confidence of one chunk.

    ``pixels`` (src.height×src.width×3 uint8) and ``valid`` (same h×w bool, False = nodata, or None) hold
    the input of ``src``, which must contain every grid window touching ``out`` (:func:`source_window`).
    ``cancel()`` is checked between batches and raises :class:`~factseg_core.engine.Cancelled`.
    """
    sums = _accumulate(runner, pixels, valid, image_size, src, out, patch, stride, batch_size, tta, cancel)
    return sums.engine.finish(sums.acc, out.height, sums.count_y, sums.count_x, sums.out_valid, confidence)


@torch.inference_mode()
def chunk_probabilities(
    runner: WindowRunner,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    image_size: tuple[int, int],
    src: Window,
    out: Window,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = BATCH_SIZE,
    tta: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Averaged class probabilities (C×out.height×out.width float32, on CPU) of ``out``; see :func:`predict_chunk`.

    Pixels entirely in skipped (all-nodata) windows have undefined probabilities (0 here).
    """
    sums = _accumulate(runner, pixels, valid, image_size, src, out, patch, stride, batch_size, tta, cancel)
    counts = torch.from_numpy(np.outer(sums.count_y, sums.count_x)).to(sums.engine.device)
    return (sums.acc / counts).cpu()


@dataclass
class _ChunkSums:
    """A chunk's summed window probabilities and what dividing and masking them needs."""

    engine: WindowEngine
    acc: torch.Tensor  #: C × out.height × out.width sums
    count_y: np.ndarray  #: windows covering each row of out
    count_x: np.ndarray  #: windows covering each column of out
    out_valid: np.ndarray | None  #: validity of out's pixels (None: all valid)


def _accumulate(
    runner: WindowRunner,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    image_size: tuple[int, int],
    src: Window,
    out: Window,
    patch: int,
    stride: int,
    batch_size: int,
    tta: bool,
    cancel: Callable[[], bool] | None,
) -> _ChunkSums:
    """Check the request, then add every touching window that holds some valid pixel into ``out``'s sums."""
    height, width = image_size
    check_inside(out, height, width, "out")
    check_inside(src, height, width, "src")
    check_pixels(pixels, valid, src.height, src.width, "predict_chunk")
    need = source_window(image_size, out, patch, stride)
    if not (src.y0 <= need.y0 and src.x0 <= need.x0 and need.y1 <= src.y1 and need.x1 <= src.x1):
        raise ValueError(f"src {src} does not hold all windows touching out {out}: it must contain {need}")
    engine = WindowEngine(runner, batch_size, tta, cancel)

    def local(win: Window) -> tuple[slice, slice]:
        return slice(win.y0 - src.y0, win.y1 - src.y0), slice(win.x0 - src.x0, win.x1 - src.x0)

    windows = touching_windows(image_size, out, patch, stride)
    if valid is not None:
        windows = [w for w in windows if valid[local(w)].any()]
    image = fill_nodata(pixels, valid)
    acc = engine.zeros(out.height, out.width)
    engine.run(windows, lambda win: image[local(win)], acc, (out.y0, out.x0))
    return _ChunkSums(
        engine,
        acc,
        coverage(height, patch, stride)[out.y0 : out.y1],
        coverage(width, patch, stride)[out.x0 : out.x1],
        None if valid is None else valid[local(out)],
    )


__all__ = ["chunk_probabilities", "predict_chunk"]
