"""The sliding-window grid of the reference evaluation, defined once for the engine, the worker and training.

Along an axis of length L with patch p and stride s: if L ≤ p there is one window [0, L); otherwise
windows start at 0, s, 2s, … (ceil((L − p) / s) + 1 of them) and the last is shifted back to end at L.
Every window therefore has the same size, min(p, L), which lets windows be batched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


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
