"""Precision choices: ``auto`` takes the fastest measured path that agrees with fp32, never one slower than fp32."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from factseg_core import save_checkpoint
from factseg_core.backends import TorchRunner
from factseg_core.precision import (
    MIN_AGREEMENT,
    Measurement,
    auto_precision,
    calibration_sources,
    choose_precision,
    format_probe,
    prepare_worker_model,
    probe,
)
from factseg_core.quantize import CalibrationNeeded


def test_bf16_slower_than_fp32_is_never_chosen():
    # the figures of this Xeon (issue 15): bf16 0.081 MP/s vs fp32 0.124 — as seconds per window
    measured = [Measurement("fp32", 1 / 0.124, 1.0), Measurement("bf16", 1 / 0.081, 0.999)]
    assert choose_precision(measured) == "fp32"


def test_the_fastest_path_that_agrees_wins():
    measured = [Measurement("fp32", 10.0, 1.0), Measurement("bf16", 4.0, 0.999), Measurement("int8", 3.0, 0.998)]
    assert choose_precision(measured) == "int8"
    # int8 faster still, but disagreeing too much: bf16
    measured[2] = Measurement("int8", 2.0, MIN_AGREEMENT - 0.001)
    assert choose_precision(measured) == "bf16"


def test_marginal_gains_and_unavailable_paths_keep_fp32():
    measured = [Measurement("fp32", 10.0, 1.0), Measurement("bf16", 9.5, 1.0),  # 1.05×: within timing noise
                Measurement("int8", None, None, "not calibrated")]
    assert choose_precision(measured) == "fp32"
    with pytest.raises(ValueError, match="fp32"):
        choose_precision([Measurement("bf16", 1.0, 1.0)])
    table = format_probe(measured, "fp32")
    assert "not available: not calibrated" in table and "auto → fp32" in table


def test_probe_measures_real_runners_and_reports_what_is_missing(tiny_checkpoint):
    results = {m.precision: m for m in probe(tiny_checkpoint, device="cpu", side=64)}
    assert set(results) == {"fp32", "bf16", "int8"}
    assert results["fp32"].agreement == 1.0 and results["fp32"].seconds > 0
    assert results["bf16"].seconds > 0 and 0.5 < results["bf16"].agreement <= 1.0
    assert not results["int8"].usable and "--calibrate" in results["int8"].note  # not calibrated yet


def test_probe_with_injected_timings_picks_fp32_where_bf16_is_slower(tiny_model):
    import time

    class Slow(TorchRunner):  # a real runner that takes longer per call, as bf16 does on this Xeon
        def __call__(self, batch):
            t0 = time.perf_counter()
            out = super().__call__(batch)
            time.sleep(5 * (time.perf_counter() - t0) + 0.1)  # 6× its own compute: slower whatever the load
            return out

    runners = {"fp32": TorchRunner(tiny_model, device="cpu"), "bf16": Slow(tiny_model, device="cpu", amp="bf16")}
    measured = probe("unused", device="cpu", precisions=["fp32", "bf16"], make=runners.__getitem__, side=64)
    assert measured[1].seconds > measured[0].seconds
    assert choose_precision(measured) == "fp32"


def test_auto_caches_its_probe_per_model_contents(tiny_checkpoint, tiny_model, tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    first = auto_precision(model, device="cpu", side=64)
    cache = tmp_path / "m.pt.precision.json"
    assert json.loads(cache.read_text()) == first and first["choice"] in ("fp32", "bf16")
    stamp = cache.stat().st_mtime_ns
    assert auto_precision(model, device="cpu", side=64) == first and cache.stat().st_mtime_ns == stamp
    changed = copy.deepcopy(tiny_model)  # never modify the session's fixture
    with torch.no_grad():
        changed.fg_head.bias.add_(0.01)
    save_checkpoint(changed, model)  # other contents: probed again
    assert auto_precision(model, device="cpu", side=64)["key"]["model_sha256"] != first["key"]["model_sha256"]


def test_worker_model_preparation(tiny_checkpoint, tmp_path):
    assert prepare_worker_model(str(tiny_checkpoint), "torch", "cpu") == (str(tiny_checkpoint), "torch", None)
    assert prepare_worker_model(str(tiny_checkpoint), "torch", "cpu", "bf16") == (str(tiny_checkpoint), "torch", "bf16")
    assert prepare_worker_model(str(tiny_checkpoint), "torch", "cpu", amp="bf16")[2] == "bf16"  # older --amp
    with pytest.raises(ValueError, match="contradicts"):
        prepare_worker_model(str(tiny_checkpoint), "torch", "cpu", "int8", amp="bf16")
    with pytest.raises(CalibrationNeeded):
        prepare_worker_model(str(tiny_checkpoint), "torch", "cpu", "int8")
    with pytest.raises(ValueError, match="not found"):
        calibration_sources([tmp_path / "missing.tif"], open_image=str)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert calibration_sources([tmp_path], open_image=str) == [str(tmp_path / "a.png")]


def test_worker_refuses_int8_before_calibration_with_one_clear_sentence(tiny_checkpoint):
    import subprocess

    from project_paths import REPO_ROOT, VENV_PYTHON

    proc = subprocess.run([str(VENV_PYTHON), "-m", "worker", "--model", str(tiny_checkpoint), "--precision", "int8",
                           "--bind", "ipc:///tmp/factseg-precision-test.ipc"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 1
    assert "no int8 model calibrated for tiny_r18.pt" in proc.stderr and "--calibrate" in proc.stderr
