"""``sliding_predict`` (the array-level reference) against a naive, independently written implementation.

The naive version re-derives the reference protocol from its definition: windows at 0, s, 2s, … with the
last shifted back to end at the border, one window of the image's size where the image is smaller than the
patch, each window normalised with numpy, zero-padded (after normalisation) to a multiple of 32, run alone,
cropped, and every pixel's probabilities averaged over the windows that cover it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factseg_core import sliding_predict
from factseg_core.backends import TorchRunner
from factseg_core.config import MEAN, STD
from factseg_core.sweep import stream_predict


class PaddingSensitiveNet(torch.nn.Module):
    """Cheap stand-in for FactSeg: 5-class softmax of a 5×5 conv, so border/padding context changes outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 5, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0, "windows must be padded to a multiple of 32"
        return torch.softmax(self.conv(x) * 3, dim=1)


def naive_starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [0]
    starts, x = [], 0
    while True:
        if x + patch >= length:
            starts.append(length - patch)
            return starts
        starts.append(x)
        x += stride


def naive_sliding(model, img: np.ndarray, patch: int, stride: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = min(patch, h), min(patch, w)
    total, count = None, np.zeros((h, w))
    normalised = (img.astype(np.float64) - np.array(MEAN)) / np.array(STD)
    for y in naive_starts(h, patch, stride):
        for x in naive_starts(w, patch, stride):
            win = normalised[y : y + ph, x : x + pw]
            padded = np.zeros((math.ceil(ph / 32) * 32, math.ceil(pw / 32) * 32, 3))
            padded[:ph, :pw] = win
            inp = torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32))
            with torch.no_grad():
                prob = model(inp)[0, :, :ph, :pw].double().numpy()
            if total is None:
                total = np.zeros((prob.shape[0], h, w))
            total[:, y : y + ph, x : x + pw] += prob
            count[y : y + ph, x : x + pw] += 1
    assert (count > 0).all()
    return total / count


@pytest.mark.parametrize("size", [(100, 150), (64, 64), (1, 200), (200, 1), (33, 47), (130, 65)])
@pytest.mark.parametrize("patch,stride", [(64, 32), (64, 48), (96, 64)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_naive_definition(size, patch, stride, batch_size):
    model = PaddingSensitiveNet().eval()
    img = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    got = sliding_predict(model, img, patch, stride, batch_size=batch_size)
    want = naive_sliding(model, img, patch, stride)
    assert got.dtype == np.float32 and got.shape == (5, *size)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_real_factseg_matches_naive(tiny_model):
    img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    got = sliding_predict(tiny_model, img, 64, 32, batch_size=4)
    np.testing.assert_allclose(got, naive_sliding(tiny_model, img, 64, 32), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)


def test_streaming_engine_accepts_any_probability_module():
    """A generic module (no FactSeg config) behind TorchRunner: class count probed, result still exact."""
    model = PaddingSensitiveNet().eval()
    runner = TorchRunner(model, "cpu", channels_last=False)
    assert runner.num_classes == 5 and runner.classes is None
    img = np.random.default_rng(5).integers(0, 256, (150, 110, 3), dtype=np.uint8)
    want = naive_sliding(model, img, 64, 40)
    rows: list[np.ndarray] = []
    confs: list[np.ndarray] = []
    stream_predict(runner, 150, 110, lambda a, b: (img[a:b], None),
                   lambda y, k, p: (rows.append(k), confs.append(p)), 64, 40, confidence=True)
    np.testing.assert_allclose(np.concatenate(confs), want.max(0), atol=1e-5, rtol=0)
    top2 = np.sort(want, 0)[-2:]
    decided = top2[1] - top2[0] > 1e-5
    assert (np.concatenate(rows) == want.argmax(0))[decided].all()


def test_rejects_bad_input():
    model = PaddingSensitiveNet().eval()
    with pytest.raises(ValueError, match="H×W×3"):
        sliding_predict(model, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        sliding_predict(model, np.zeros((10, 10, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="stride"):
        sliding_predict(model, np.zeros((10, 10, 3), np.uint8), patch=32, stride=64)
