"""The model card end to end on the training side: a fine-tuned model carries gsd_m, classes, bands, normalisation,
windows, what it was trained on and its validation IoU; a real worker serves it in info and open; the ONNX export
carries it; ``python -m training.model_card`` prints it and writes a copy with a field set, leaving the original
byte-identical; checkpoints without a card get a derived one."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from project_paths import REPO_ROOT, VENV_PYTHON
from worker_support import TINY_CONFIG, make_export, start_worker

from factseg_core import load_model, save_checkpoint
from factseg_core.checkpoint import CheckpointError, checkpoint_dict
from factseg_core.classes import ISAID_CLASSES
from factseg_core.config import MEAN, PATCH_SIZE, STD, STRIDE
from training.train import main as train_main
from worker.client import WorkerClient

GSD = 0.3


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_PYTHON), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """A tiny model fine-tuned (2 iterations, final evaluation on) from an export recorded at GSD m/px."""
    root = tmp_path_factory.mktemp("card")
    export = make_export(root / "export", gsd_m=GSD)
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    code = train_main(["--config", str(root / "tiny.yaml"), "--data-root", str(export), "--work-dir",
                       str(root / "run"), "--max-iters", "2", "--device", "cpu", "--threads", "1"])
    assert code == 0
    return root / "run" / "final.pt"


def test_finetuned_checkpoint_carries_the_card(finetuned):
    raw = torch.load(finetuned, map_location="cpu", weights_only=True)
    card = raw["model_card"]
    json.dumps(card, allow_nan=False)  # plain JSON data
    assert card["gsd_m"] == GSD
    assert [c["name"] for c in card["classes"]] == ["background", "tank", "vehicle", "vessel"]
    assert card["classes"] == raw["classes"]
    assert card["bands"] == ["red", "green", "blue"]
    assert card["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    assert (card["patch"], card["stride"]) == (64, 64)  # TINY_CONFIG's eval windows
    assert card["trained_on"]["tiles"] == {"train": 3, "val": 1}
    metrics = card["metrics"]
    assert metrics["split"] == "val" and set(metrics["iou"]) == {"background", "tank", "vehicle", "vessel"}
    evaluated = json.loads((finetuned.parent / "eval_val.json").read_text())
    assert metrics["miou"] == evaluated["miou"]
    created = datetime.datetime.fromisoformat(card["created"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 3600
    latest = torch.load(finetuned.parent / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["model_card"]["gsd_m"] == GSD  # every checkpoint of the run carries it


def test_worker_serves_the_card_in_info_and_open(finetuned):
    card = load_model(finetuned).model_card
    worker = start_worker(finetuned, None)
    try:
        with WorkerClient(worker.endpoint) as client:
            info = client.info()
            opened, options, _ = client.open_job(100, 120)
    finally:
        worker.stop()
    assert info["model_card"] == card and info["model_card"]["gsd_m"] == GSD
    assert opened["model_card"] == card
    assert options["patch"] == 64  # the card's windows are the model's defaults
    assert isinstance(info["device_name"], str) and info["device_name"] and info["device_memory_bytes"] is None
    assert info["precision"] == "fp32" and info["max_batch"] == 1


def test_onnx_export_carries_the_card(finetuned, tmp_path):
    import onnx

    from factseg_core.backends import OnnxRunner

    out = tmp_path / "model.onnx"
    done = _run("training/export_onnx.py", "--model", str(finetuned), "--output", str(out), "--no-verify")
    assert done.returncode == 0, done.stderr
    props = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    card = json.loads(props["model_card"])
    assert card == load_model(finetuned).model_card
    assert json.loads(props["factseg"])["model_card"] == card
    runner = OnnxRunner(out, device="cpu")
    assert runner.model_card == card and runner.model_info["patch"] == 64
    printed = _run("-m", "training.model_card", str(out))
    assert printed.returncode == 0 and json.loads(printed.stdout)["gsd_m"] == GSD


def test_cli_sets_gsd_on_a_copy_that_a_worker_serves(tiny_checkpoint, tmp_path):
    before = _sha(tiny_checkpoint)
    printed = _run("-m", "training.model_card", str(tiny_checkpoint))
    assert printed.returncode == 0, printed.stderr
    card = json.loads(printed.stdout)
    assert card["gsd_m"] is None and len(card["classes"]) == 16 and card["trained_on"] is None
    copy = tmp_path / "copy.pt"
    done = _run("-m", "training.model_card", str(tiny_checkpoint), "--set", "gsd_m=0.5", "--output", str(copy))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gsd_m"] == 0.5
    assert _sha(tiny_checkpoint) == before  # the original untouched
    original, changed = load_model(tiny_checkpoint), load_model(copy)
    assert changed.model_card["gsd_m"] == 0.5 and original.model_card["gsd_m"] is None
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), changed.state_dict().values()))
    worker = start_worker(copy, None)
    try:
        with WorkerClient(worker.endpoint) as client:
            assert client.info()["model_card"]["gsd_m"] == 0.5
    finally:
        worker.stop()


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "gsd_m=-1", "--output", "{out}"], "gsd_m must be a positive number"),
    (["--set", "gsd_m=fine", "--output", "{out}"], "gsd_m must be a positive number"),
    (["--set", "colour=red", "--output", "{out}"], "not a model card field"),
    (["--set", "classes=[]", "--output", "{out}"], "cannot be set"),
    (["--set", "gsd_m=0.5", "--output", "{model}"], "is the model itself"),
])
def test_cli_refuses_bad_assignments_and_overwriting(tiny_checkpoint, tmp_path, capsys, args, words):
    from training.model_card import main

    before = _sha(tiny_checkpoint)
    out = tmp_path / "out.pt"
    code = main([str(tiny_checkpoint), *[a.format(out=out, model=tiny_checkpoint) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not out.exists() and _sha(tiny_checkpoint) == before


def test_checkpoints_without_a_card_get_a_derived_one(tiny_model, tmp_path):
    path = tmp_path / "old.pt"
    raw = checkpoint_dict(tiny_model)
    raw.pop("model_card", None)
    torch.save(raw, path)
    card = load_model(path).model_card
    assert card["gsd_m"] is None and card["metrics"] is None and card["created"] is None
    assert [c["name"] for c in card["classes"]] == [c.name for c in ISAID_CLASSES]
    assert (card["patch"], card["stride"]) == (PATCH_SIZE, STRIDE)
    raw["model_card"] = {**card, "gsd_m": "half a metre"}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="gsd_m must be a positive number"):
        load_model(path)
    raw["model_card"] = {"gsd_m": 0.25}  # an older, partial card: the rest is derived
    torch.save(raw, path)
    model = load_model(path)
    assert model.model_card["gsd_m"] == 0.25 and model.model_card["bands"] == ["red", "green", "blue"]
    save_checkpoint(model, path)  # the card survives a save
    assert torch.load(path, weights_only=True)["model_card"]["gsd_m"] == 0.25
