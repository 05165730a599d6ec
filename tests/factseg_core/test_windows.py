"""The window grid of the reference evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from factseg_core.config import CHUNK_SIZE
from factseg_core.windows import (
    Window,
    coverage,
    padded_size,
    plan_chunks,
    plan_size,
    source_window,
    touching_windows,
    window_grid,
    window_starts,
    windows_touching,
)


@pytest.mark.parametrize(
    "length, starts",
    [
        (896, [0]),
        (500, [0]),
        (897, [0, 1]),
        (1408, [0, 512]),
        (1409, [0, 512, 513]),
        (2000, [0, 512, 1024, 1104]),
    ],
)
def test_starts_follow_the_reference(length, starts):
    assert window_starts(length, 896, 512) == starts


@pytest.mark.parametrize("height, width", [(1, 1), (1, 3000), (895, 897), (2049, 1537), (4000, 10)])
def test_grid_covers_every_pixel_with_equal_sized_windows(height, width):
    windows = window_grid(height, width, 896, 512)
    assert {(w.height, w.width) for w in windows} == {(min(896, height), min(896, width))}
    assert all(0 <= w.y0 and w.y1 <= height and 0 <= w.x0 and w.x1 <= width for w in windows)
    ys = sorted({w.y0 for w in windows})
    assert ys[0] == 0 and max(w.y1 for w in windows) == height
    assert all(b - a <= 512 for a, b in zip(ys, ys[1:]))
    assert windows == sorted(windows)  # row-major


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="positive"):
        window_starts(0, 896, 512)
    with pytest.raises(ValueError, match="uncovered"):
        window_starts(1000, 256, 512)
    assert padded_size(896, 32) == 896 and padded_size(897, 32) == 928


# ------------------------------------------------------------------------------------------ coverage
@pytest.mark.parametrize("length, patch, stride", [(1, 896, 512), (2000, 896, 512), (61, 16, 9), (10, 4, 4), (7, 3, 1)])
def test_coverage_counts_the_windows_over_each_index(length, patch, stride):
    size = min(patch, length)
    expected = [sum(1 for s in window_starts(length, patch, stride) if s <= i < s + size) for i in range(length)]
    got = coverage(length, patch, stride)
    assert got.dtype == np.float32 and got.tolist() == expected and min(expected) >= 1


def test_touching_windows_are_the_grid_windows_that_intersect():
    size, patch, stride = (150, 200), 64, 32
    grid = window_grid(*size, patch, stride)
    for out in (Window(0, 0, 1, 1), Window(40, 70, 41, 200), Window(0, 0, 150, 200), Window(149, 199, 150, 200)):
        expected = [g for g in grid if g.y0 < out.y1 and g.y1 > out.y0 and g.x0 < out.x1 and g.x1 > out.x0]
        assert touching_windows(size, out, patch, stride) == expected
        assert windows_touching(size, out, patch, stride) == len(expected)


def test_source_window_refuses_a_window_outside_the_image():
    with pytest.raises(ValueError, match="outside the 10×10 image"):
        source_window((10, 10), Window(0, 0, 11, 5), 4, 2)


# ------------------------------------------------------------------------------------------ plan size
@pytest.mark.parametrize("stride", [1, 3, 32, 512])
def test_plan_size_is_the_number_of_chunks_plan_chunks_makes(stride):
    patch = max(stride, 2 * stride - 1)
    sides = sorted({1, 2, stride - 1, stride, stride + 1, 3 * stride + 2, 11 * stride + 5} - {0})
    for chunk_size in sorted({1, max(1, stride - 1), stride, stride + 1, 5 * stride - 1, 8 * stride}):
        for h in sides:
            for w in sides:
                assert plan_size(h, w, stride, chunk_size) == len(plan_chunks(h, w, patch, stride, chunk_size)), (
                    h, w, stride, chunk_size)


def test_plan_size_rounds_the_chunk_side_down_to_the_stride():
    # 4096 // 1000 * 1000 = 4000-px chunks: 16001 px make 5 per axis, where 4096-px chunks would make 4.
    assert plan_size(16001, 16001, 1000, 4096) == 5 * 5
    assert plan_size(16001, 16001, 1024, 4096) == 4 * 4
    assert plan_size(20_000, 30_000) == math.ceil(20_000 / CHUNK_SIZE) * math.ceil(30_000 / CHUNK_SIZE)


def test_plan_defaults_come_from_the_config():
    assert plan_chunks(9000, 100)[1].out == Window(CHUNK_SIZE, 0, min(2 * CHUNK_SIZE, 9000), 100)
    assert plan_chunks(100, 100)[0].src == Window(0, 0, 100, 100)
    with pytest.raises(ValueError, match="chunk_size"):
        plan_size(10, 10, 4, 0)
    with pytest.raises(ValueError, match="positive"):
        plan_size(0, 10)
