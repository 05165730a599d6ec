"""int8 CPU path: static quantization of the ONNX export, calibrated on imagery, cached by the model's hash.

The model is a ResNet-18 FactSeg trained here for a few dozen steps on synthetic scenes (random weights
say little about how quantization moves class decisions), then compared with its exact float32 path.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import onnx
import pytest
import torch

from factseg_core import save_checkpoint
from factseg_core.backends import OnnxRunner, TorchRunner, read_onnx_metadata, runner_info
from factseg_core.config import MEAN, STD
from factseg_core.losses import joint_loss
from factseg_core.quantize import (
    CalibrationNeeded,
    QuantizeOptions,
    cache_path,
    cached_int8,
    calibrate,
    calibration_windows,
    float_tail,
)
from factseg_core.runners import make_runner
from training.synthetic import generate

#: Stated bound: pixels whose class differs between the int8 and the exact path (trained model, held-out scene).
MAX_DISAGREEMENT = 0.01
SIDE = 96


def _normalise(image: np.ndarray) -> torch.Tensor:
    x = (torch.from_numpy(image).float() - torch.tensor(MEAN)) / torch.tensor(STD)
    return x.permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def scenes():
    scenes = [generate(seed, 128, 128) for seed in (11, 12, 13, 14)]  # the generator's smallest comfortable size
    return [(im[:SIDE, :SIDE].copy(), lab[:SIDE, :SIDE].copy()) for im, lab in scenes]


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_model, scenes, tmp_path_factory):
    """A ResNet-18 FactSeg fitted for 25 Adam steps on three synthetic scenes (the fourth is held out)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: far faster than two on a CPU shared with other work
    model = copy.deepcopy(tiny_model).train()
    x = torch.cat([_normalise(im) for im, _ in scenes[:3]])
    y = torch.from_numpy(np.stack([lab for _, lab in scenes[:3]])).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(25):
        fg, bi = model(x)
        loss = joint_loss(fg, bi, y, sampling="mean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("trained") / "trained_r18.pt"
    save_checkpoint(model.eval(), path)
    return path


def test_calibration_windows_are_seeded_normalised_and_padded(scenes):
    images = [scenes[0][0], scenes[1][0][:70, :50]]
    a = calibration_windows(images, count=4, side=96)
    b = calibration_windows(images, count=4, side=96)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (1, 3, 96, 96) and len(a) == 4 and a[1].shape == (1, 3, 96, 64)  # 70×50 crop padded to 96×64
    assert np.all(a[1][:, :, 70:, :] == 0) and np.all(a[1][:, :, :, 50:] == 0)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        calibration_windows([np.zeros((8, 8), np.uint8)])


def test_calibration_reads_only_crops_of_a_raster_like_source(scenes):
    class Raster:  # what the worker passes: its RasterSource (GDAL) has the same three members
        height, width, reads = SIDE, SIDE, []

        def read(self, y0, x0, y1, x1):
            self.reads.append((y0, x0, y1, x1))
            return scenes[0][0][y0:y1, x0:x1], None

    raster = Raster()
    windows = calibration_windows([raster], count=2, side=64)
    assert len(raster.reads) == 2 and all(y1 - y0 == 64 and x1 - x0 == 64 for y0, x0, y1, x1 in raster.reads)
    y0, x0, _, _ = raster.reads[0]
    assert np.allclose(windows[0][0].transpose(1, 2, 0),
                       (scenes[0][0][y0 : y0 + 64, x0 : x0 + 64] - np.array(MEAN)) / np.array(STD), atol=1e-5)


def test_int8_agrees_with_exact_on_a_trained_model_and_keeps_the_float_tail(trained_checkpoint, scenes):
    path = calibrate(trained_checkpoint, [im for im, _ in scenes[:3]], count=6, side=SIDE)
    assert path == cache_path(trained_checkpoint) and path.is_file()
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    tail = [n for n in proto.graph.node if n.name in set(float_tail(proto))]  # head convs + CP fusion: float
    assert {"Conv", "Exp", "Sigmoid", "Div"} <= {n.op_type for n in tail}
    weights = {t.name for t in proto.graph.initializer}
    assert all(n.input[1] in weights for n in tail if n.op_type == "Conv")  # float weights, no DequantizeLinear
    meta = read_onnx_metadata(path)
    assert meta["quantization"]["format"] == "qdq" and meta["quantization"]["windows"] == 6
    assert len(meta["classes"]) == 16

    int8 = make_runner(trained_checkpoint, precision="int8", device="cpu")
    assert isinstance(int8, OnnxRunner) and int8.precision == "int8"
    assert runner_info(int8)["precision"] == "int8"
    exact = make_runner(trained_checkpoint, device="cpu")
    held_out = _normalise(scenes[3][0])
    got, want = int8(held_out).argmax(1), exact(held_out).argmax(1)
    disagreement = float((got != want).float().mean())
    assert disagreement <= MAX_DISAGREEMENT, f"int8 differs from fp32 on {100 * disagreement:.2f}% of pixels"
    # the exact model's decisions are not trivial (two classes or more, each on ≥ 1% of pixels), so agreement
    # means something
    counts = torch.bincount(want.flatten())
    assert int((counts >= 0.01 * want.numel()).sum()) >= 2, counts


def test_cache_is_reused_then_invalidated_when_the_model_changes(trained_checkpoint, tiny_model, scenes, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(trained_checkpoint.read_bytes())
    with pytest.raises(CalibrationNeeded, match="--calibrate"):
        cached_int8(model)
    first = calibrate(model, [scenes[0][0]], count=2, side=64)
    assert cached_int8(model) == first
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    runner = make_runner(model, precision="int8", device="cpu")  # reused: not rewritten
    assert first.stat().st_mtime_ns == stamp and runner.precision == "int8"

    save_checkpoint(tiny_model, model)  # the model changes: the cached file no longer applies
    with pytest.raises(CalibrationNeeded):
        make_runner(model, precision="int8", device="cpu")
    second = calibrate(model, [scenes[0][0]], count=2, side=64)
    assert second != first and not first.exists()  # the stale int8 file of the old contents is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", second.name])
    assert QuantizeOptions(per_channel=False).tag != QuantizeOptions().tag


def test_quantize_options_are_checked():
    with pytest.raises(ValueError, match="qdq, qoperator"):
        QuantizeOptions(format="fp8")


def test_exact_paths_stay_the_default(trained_checkpoint):
    runner = make_runner(trained_checkpoint, device="cpu")
    assert isinstance(runner, TorchRunner) and runner.precision == "fp32" and runner.amp is None
    assert runner_info(runner)["precision"] == "fp32"
