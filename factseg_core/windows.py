"""The sliding-window grid of the reference evaluation, defined once for the engine, the worker and training.

Along an axis of length L with patch p and stride s: if L ≤ p there is one window [0, L); otherwise
windows start at 0, s, 2s, … (ceil((L − p) / s) + 1 of them) and the last is shifted back to end at L.
Every window therefore has the same size, min(p, L), which lets windows be batched.

The grid is separable (windows are row starts × column starts), so every question about it — how many
windows cover a pixel, which windows touch a rectangle, what input a rectangle needs, how an image is
tiled into independent chunks — is answered per axis here and combined.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import CHUNK_SIZE, PATCH_SIZE, STRIDE


@dataclass(frozen=True, order=True)
class Window:
    """Half-open pixel rectangle [y0, y1) × [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


@dataclass(frozen=True)
class Chunk:
    """One independent piece of work: the pixels it decides (``out``) and the input it needs (``src``)."""

    index: int
    out: Window
    src: Window


# ------------------------------------------------------------------------------------------ one axis
def _check(length: int, patch: int, stride: int) -> None:
    if length <= 0:
        raise ValueError(f"image side must be positive, got {length}")
    if patch <= 0 or stride <= 0:
        raise ValueError(f"patch and stride must be positive, got patch={patch} stride={stride}")
    if stride > patch:
        raise ValueError(f"stride {stride} larger than patch {patch} would leave pixels uncovered")


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis (see module docstring)."""
    _check(length, patch, stride)
    if length <= patch:
        return [0]
    count = math.ceil((length - patch) / stride) + 1
    return [min(i * stride, length - patch) for i in range(count)]


def touching_starts(starts: Sequence[int], size: int, a: int, b: int) -> Sequence[int]:
    """Window starts along one axis whose span [s, s+size) intersects [a, b).

    ``starts`` is strictly increasing, so the touching windows (``a - size < s < b``) are one contiguous run,
    found by bisection in O(log n) instead of a scan; the grid covers every index, so the run is never empty.
    """
    return starts[bisect_right(starts, a - size) : bisect_left(starts, b)]


def _touching_span(starts: Sequence[int], size: int, a: int, b: int) -> tuple[int, int]:
    """Span [first start, last start + size) of the windows along one axis that intersect [a, b)."""
    run = touching_starts(starts, size, a, b)
    return run[0], run[-1] + size


def coverage(length: int, patch: int, stride: int) -> np.ndarray:
    """How many windows of the grid cover each index along one axis (float32, ≥ 1 everywhere).

    The count of a pixel is the product of its row's and its column's coverage: the divisor of the average.
    """
    starts, size = window_starts(length, patch, stride), min(patch, length)
    cover = np.zeros(length + 1, dtype=np.int64)
    for s in starts:
        cover[s] += 1
        cover[s + size] -= 1
    return np.cumsum(cover[:-1]).astype(np.float32)


# ------------------------------------------------------------------------------------------ the image
def window_grid(height: int, width: int, patch: int, stride: int) -> list[Window]:
    """All windows of an image, row-major (top to bottom, then left to right)."""
    h, w = min(patch, height), min(patch, width)
    return [
        Window(y, x, y + h, x + w)
        for y in window_starts(height, patch, stride)
        for x in window_starts(width, patch, stride)
    ]


def padded_size(size: int, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is ≥ ``size``."""
    return -(-size // divisor) * divisor


def check_inside(win: Window, height: int, width: int, what: str) -> None:
    """Refuse a window that is empty or reaches outside a ``height``×``width`` image (``what`` names it)."""
    if not (0 <= win.y0 < win.y1 <= height and 0 <= win.x0 < win.x1 <= width):
        raise ValueError(f"{what} window {win} is empty or outside the {height}×{width} image")


def touching_windows(image_size: tuple[int, int], out: Window, patch: int, stride: int) -> list[Window]:
    """The grid windows that intersect ``out``, row-major (the windows that decide its pixels)."""
    height, width = image_size
    ys, xs = window_starts(height, patch, stride), window_starts(width, patch, stride)
    wh, ww = min(patch, height), min(patch, width)
    return [
        Window(y, x, y + wh, x + ww)
        for y in touching_starts(ys, wh, out.y0, out.y1)
        for x in touching_starts(xs, ww, out.x0, out.x1)
    ]


def windows_touching(image_size: tuple[int, int], out: Window, patch: int = PATCH_SIZE, stride: int = STRIDE) -> int:
    """How many grid windows intersect ``out`` (before skipping all-nodata ones): the work a chunk costs."""
    height, width = image_size
    ys, xs = window_starts(height, patch, stride), window_starts(width, patch, stride)
    wh, ww = min(patch, height), min(patch, width)
    return len(touching_starts(ys, wh, out.y0, out.y1)) * len(touching_starts(xs, ww, out.x0, out.x1))


def source_window(image_size: tuple[int, int], out: Window, patch: int = PATCH_SIZE, stride: int = STRIDE) -> Window:
    """The input rectangle needed to decide ``out`` exactly: the union of the grid windows touching it."""
    height, width = image_size
    check_inside(out, height, width, "out")
    ys, xs = window_starts(height, patch, stride), window_starts(width, patch, stride)
    wh, ww = min(patch, height), min(patch, width)
    (sy0, sy1), (sx0, sx1) = _touching_span(ys, wh, out.y0, out.y1), _touching_span(xs, ww, out.x0, out.x1)
    return Window(sy0, sx0, sy1, sx1)


# ------------------------------------------------------------------------------------------ chunk plans
def _chunk_step(stride: int, chunk_size: int) -> int:
    """The side of a chunk: ``chunk_size`` rounded down to a multiple of ``stride``, at least one stride."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return max(stride, chunk_size // stride * stride)


def _axis_plan(length: int, patch: int, stride: int, step: int) -> list[tuple[int, int, int, int]]:
    """Per-axis cuts ``(out_a, out_b, src_a, src_b)``: ``out`` tiles [0, length) by ``step``, ``src`` is its span."""
    starts, size = window_starts(length, patch, stride), min(patch, length)
    cuts = []
    for a in range(0, length, step):
        b = min(a + step, length)
        cuts.append((a, b, *_touching_span(starts, size, a, b)))
    return cuts


def plan_size(height: int, width: int, stride: int = STRIDE, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks :func:`plan_chunks` makes, without building them (a worker's plan-size limit)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    step = _chunk_step(stride, chunk_size)
    return math.ceil(height / step) * math.ceil(width / step)


def plan_chunks(height: int, width: int, patch: int = PATCH_SIZE, stride: int = STRIDE,
                chunk_size: int = CHUNK_SIZE) -> list[Chunk]:
    """Tile an image into chunks whose ``out`` regions are aligned to the stride grid, row-major.

    ``chunk_size`` is rounded down to a multiple of ``stride`` (at least one stride). Each chunk's ``src`` is
    :func:`source_window` of its ``out``; neighbouring chunks share one row/column of windows, which are
    computed by both (a cost of about ``stride / chunk_size`` per axis). The touching span is found once per
    chunk row and per chunk column and combined: O(chunks + window starts), not chunks × window starts.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    _check(max(height, width), patch, stride)  # patch/stride refused with a clear message
    step = _chunk_step(stride, chunk_size)
    rows, cols = _axis_plan(height, patch, stride, step), _axis_plan(width, patch, stride, step)
    return [
        Chunk(i * len(cols) + j, Window(oy0, ox0, oy1, ox1), Window(sy0, sx0, sy1, sx1))
        for i, (oy0, oy1, sy0, sy1) in enumerate(rows)
        for j, (ox0, ox1, sx0, sx1) in enumerate(cols)
    ]


__all__ = [
    "Chunk",
    "Window",
    "check_inside",
    "coverage",
    "padded_size",
    "plan_chunks",
    "plan_size",
    "source_window",
    "touching_starts",
    "touching_windows",
    "window_grid",
    "window_starts",
    "windows_touching",
]
