"""Out of device memory during a request: the runner halves its batch and retries, remembers what worked,
and only when one window does not fit fails with a clear error. The error is injected at the runner's
model (a real FactSeg forward pass runs around it), since this machine has no GPU to fill."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factseg_core.backends import OnnxRunner, OutOfDeviceMemory, TorchRunner, is_out_of_memory, runner_info
from factseg_core.sweep import stream_predict


class FailsAbove(torch.nn.Module):
    """The real model, except that a batch of more than ``limit`` windows raises CUDA's out-of-memory error."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []
        self.config, self.classes = model.config, model.classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB (injected)")
        return self.model(x)


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))


def test_halves_the_batch_retries_and_remembers(tiny_model):
    exact = TorchRunner(tiny_model, device="cpu", max_batch=8)
    runner = TorchRunner(FailsAbove(tiny_model, limit=2), device="cpu", max_batch=8)
    failing = runner.model  # the runner converts a copy (channels_last)
    x = _batch(5)
    got = runner(x)
    assert failing.sizes == [5, 2, 2, 1]  # 5 fails, then parts of 5 // 2 = 2 windows
    assert runner.max_batch == 2 and runner_info(runner)["max_batch"] == 2
    assert torch.allclose(got, exact(x), atol=1e-5)
    failing.sizes.clear()
    runner(_batch(4))  # the next request starts from the settled size: no failure, no retry
    assert failing.sizes == [2, 2]


def test_engine_survives_and_streams_the_same_classes(tiny_model):
    image = np.random.default_rng(0).integers(0, 256, (100, 140, 3), dtype=np.uint8)

    def run(runner):
        rows = []
        stream_predict(runner, 100, 140, lambda a, b: (image[a:b], None), lambda y0, c, _: rows.append(c), 64, 32,
                       batch_size=4)
        return np.concatenate(rows)

    runner = TorchRunner(FailsAbove(tiny_model, limit=1), device="cpu", max_batch=4)
    assert np.array_equal(run(runner), run(TorchRunner(tiny_model, device="cpu", max_batch=4)))
    assert runner.max_batch == 1


def test_one_window_that_does_not_fit_fails_clearly(tiny_model):
    runner = TorchRunner(FailsAbove(tiny_model, limit=0), device="cpu", max_batch=4)
    with pytest.raises(OutOfDeviceMemory, match="out of memory for a single 64×64 window"):
        runner(_batch(3))
    assert runner.max_batch == 1
    # other errors are not mistaken for memory: they propagate unchanged and the batch size stays
    runner = TorchRunner(tiny_model, device="cpu", max_batch=4)
    with pytest.raises(ValueError, match="multiples of 32"):
        runner(torch.zeros(2, 3, 40, 64))
    assert runner.max_batch == 4


def test_onnx_runner_backs_off_too(tiny_checkpoint, tmp_path, tiny_model):
    from factseg_core.onnx_export import export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model, path)
    runner = OnnxRunner(path, device="cpu", max_batch=4, threads=1)
    real = runner._run_once
    calls = []

    def run_once(part):  # onnxruntime's CUDA provider reports a failed allocation like this
        calls.append(int(part.shape[0]))
        if part.shape[0] > 1:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
                               "buffer of size 411041792")
        return real(part)

    runner._run_once = run_once
    x = _batch(3)
    got = runner(x)
    assert calls == [3, 1, 1, 1] and runner.max_batch == 1
    assert torch.allclose(got, TorchRunner(tiny_model, device="cpu")(x), atol=1e-4)


def test_out_of_memory_recognition():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only runtime errors from the libraries
