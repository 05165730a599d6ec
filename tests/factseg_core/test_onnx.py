"""ONNX export (training/export_onnx.py, run as a real process) and the onnxruntime backend of the engine."""
from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import onnx
import pytest
import torch
from project_paths import REPO_ROOT, VENV_PYTHON

from factseg_core import plan_chunks, predict_chunk, sliding_predict, stream_predict
from factseg_core.backends import OnnxRunner, TorchRunner, read_onnx_metadata, runner_info
from factseg_core.config import MEAN, STD
from factseg_core.onnx_export import compare_with_torch
from factseg_core.runners import make_runner

EXPORT = [str(VENV_PYTHON), str(REPO_ROOT / "training" / "export_onnx.py")]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    proc = subprocess.run([*EXPORT, "--model", str(tiny_checkpoint), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "onnx.checker passed" in proc.stdout and "max |Δp|" in proc.stdout
    return out


def test_export_is_valid_dynamic_and_described(exported, tiny_model):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, False, True, True], dims
        assert dims[1].dim_value == (3 if value is proto.graph.input[0] else 16)
    meta = read_onnx_metadata(exported)
    assert [c["name"] for c in meta["classes"]] == [c.name for c in tiny_model.classes]
    assert [tuple(c["color"]) for c in meta["classes"]] == [c.color for c in tiny_model.classes]
    assert meta["mean"] == list(MEAN) and meta["std"] == list(STD)
    assert (meta["patch"], meta["stride"], meta["backbone"]) == (896, 512, "resnet18")
    plain = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(plain["class_names"])[14] == "plane"


def test_onnxruntime_matches_torch(exported, tiny_model):
    # shapes unlike the traced 1×3×128×128: batch, height and width are really dynamic
    assert compare_with_torch(tiny_model, exported, shapes=((3, 32, 96), (1, 160, 64))) < 1e-4


def test_engine_on_onnx_matches_reference(exported, tiny_model):
    runner = make_runner(exported, backend="onnx", device="cpu", threads=2)
    assert isinstance(runner, OnnxRunner) and runner.name == "onnx" and runner.device == "cpu"
    img = np.random.default_rng(2).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    ref = sliding_predict(tiny_model, img, 64, 32)
    rows: list = []
    stream_predict(runner, 70, 100, lambda a, b: (img[a:b], None), lambda y, k, p: rows.append(p), 64, 32,
                   confidence=True)
    np.testing.assert_allclose(np.concatenate(rows), ref.max(0), atol=1e-4, rtol=0)
    c = plan_chunks(70, 100, 64, 32, 64)[1]
    classes, _ = predict_chunk(runner, img[c.src.y0 : c.src.y1, c.src.x0 : c.src.x1], None, (70, 100),
                               c.src, c.out, 64, 32)
    top2 = np.sort(ref, 0)[-2:, c.out.y0 : c.out.y1, c.out.x0 : c.out.x1]
    want = ref.argmax(0)[c.out.y0 : c.out.y1, c.out.x0 : c.out.x1]
    assert (classes == want)[top2[1] - top2[0] > 1e-4].all()


def test_make_runner_describes_both_backends_alike(exported, tiny_checkpoint):
    torch_info = runner_info(make_runner(tiny_checkpoint, backend="torch", device="cpu"))
    onnx_info = runner_info(make_runner(exported, backend="onnx", device="cpu"))
    for key in ("classes", "num_classes", "backbone", "patch", "stride", "device"):
        assert torch_info[key] == onnx_info[key], key
    assert (torch_info["backend"], onnx_info["backend"]) == ("torch", "onnx")


def test_runner_errors_are_specific(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx")
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 32, 32),), str(foreign), dynamo=False)
    with pytest.raises(ValueError, match="no 'factseg' metadata"):
        OnnxRunner(foreign)
    with pytest.raises(ValueError, match="backend"):
        make_runner(tiny_checkpoint, backend="tensorrt")
    with pytest.raises(ValueError, match="amp"):
        TorchRunner(torch.nn.Identity(), "cpu", amp="fp16")
    with pytest.raises(ValueError, match="multiples of 32"):
        make_runner(tiny_checkpoint, device="cpu")(torch.zeros(1, 3, 40, 32))


def test_export_cli_rejects_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([*EXPORT, "--model", str(bad), "--output", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a FactSeg model file" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_torch_runner_matches_cpu(tiny_model):
    x = torch.randn(2, 3, 64, 96)
    cpu = TorchRunner(tiny_model, "cpu", channels_last=False)(x)
    for amp, tol in ((None, 1e-4), ("bf16", 5e-2), ("fp16", 1e-2)):
        got = TorchRunner(tiny_model, "cuda", amp=amp)(x)
        assert got.device.type == "cpu" and got.dtype == torch.float32
        assert (got - cpu).abs().max() < tol, amp
