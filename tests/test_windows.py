"""The window grid of the reference evaluation."""
from __future__ import annotations

import pytest

from factseg_core.windows import padded_size, window_grid, window_starts


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
