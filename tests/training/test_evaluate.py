"""evaluate.py: IoU arithmetic on constructed cases, the engine-backed prediction, and the command line."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from project_paths import REPO_ROOT, VENV_PYTHON
from torch import nn

from factseg_core import sliding_predict
from factseg_core.checkpoint import native_to_reference_key
from factseg_core.classes import ISAID_CLASSES
from factseg_core.config import MEAN, STD
from training import synthetic
from training.evaluate import (
    confusion_matrix,
    evaluate_model,
    format_table,
    iou_per_class,
    make_runner,
    predict_labels,
    summarize,
)
from training.evaluate import main as evaluate_main

CLASSES4 = ISAID_CLASSES[:4]


def test_iou_on_a_constructed_confusion_case() -> None:
    gt = np.array([0, 0, 0, 0, 1, 1, 2, 2, 255], np.uint8)
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0, 2], np.uint8)
    cm = confusion_matrix(pred, gt, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = iou_per_class(cm)
    assert iou[:3] == pytest.approx([3 / 5, 2 / 3, 1 / 2]) and math.isnan(iou[3])
    metrics = summarize(cm, CLASSES4)
    assert metrics["miou"] == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3, abs=1e-6)
    assert metrics["fg_miou"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(6 / 8, abs=1e-6)
    assert metrics["per_class"][3]["iou"] is None and metrics["pixels"] == 8
    table = format_table(metrics)
    assert "58.89" in table and "58.33" in table and "  3  baseball_diamond" in table


def test_false_positives_of_an_absent_class_count_as_zero() -> None:
    gt = np.array([[0, 0], [1, 1]], np.uint8)
    pred = np.array([[0, 3], [1, 1]], np.uint8)
    metrics = summarize(confusion_matrix(pred, gt, 4), CLASSES4)
    ious = [row["iou"] for row in metrics["per_class"]]
    assert ious == [0.5, 1.0, None, 0.0]
    assert metrics["fg_miou"] == pytest.approx(0.5)


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros(3, np.uint8), np.zeros(4, np.uint8), 4)
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(np.zeros(2, np.uint8), np.array([0, 7], np.uint8), 4)


def test_engine_prediction_equals_the_sliding_reference(tiny_model) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 100, 3), dtype=np.uint8)  # windows at x = 0 and 36 (48 shifted back)
    runner = make_runner(tiny_model, "cpu")
    pred = predict_labels(runner, image, patch=64, stride=48, batch_size=4)
    reference = sliding_predict(tiny_model, image, patch=64, stride=48, batch_size=4).argmax(0)
    assert pred.shape == (64, 100) and pred.dtype == np.uint8
    assert (pred == reference).mean() > 0.999
    tta = predict_labels(runner, image, patch=64, stride=48, batch_size=4, tta=True)
    assert tta.shape == (64, 100) and (tta != pred).mean() < 0.5


class ColourOracle(nn.Module):
    """Reads the class id from the red channel (id × 10): a perfect 'model' for position-coded images."""

    num_classes = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0] * STD[0] + MEAN[0]
        ids = torch.clamp(torch.round(red / 10), 0, 15).long()
        return torch.nn.functional.one_hot(ids, 16).permute(0, 3, 1, 2).float()


def _write_dataset(root: Path, split: str, shapes: list[tuple[int, int]]) -> None:
    colours = np.array([c.color for c in ISAID_CLASSES], np.uint8)
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for index, (h, w) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w]
        ids = ((yy // 9 + xx // 13) % 16).astype(np.uint8)
        image = np.dstack([ids * 10, yy % 256, xx % 256]).astype(np.uint8)
        Image.fromarray(image).save(root / split / "images" / f"P{index:04d}.png")
        Image.fromarray(colours[ids]).save(root / split / "masks" / f"P{index:04d}_instance_color_RGB.png")


def test_perfect_predictions_give_miou_one(tmp_path: Path) -> None:
    _write_dataset(tmp_path, "val", [(100, 130), (64, 64)])
    metrics = evaluate_model(ColourOracle(), tmp_path, "val", patch=64, stride=40, progress=False)
    assert metrics["miou"] == 1.0 and metrics["fg_miou"] == 1.0
    cm = np.array(metrics["confusion"])
    assert cm.sum() == 100 * 130 + 64 * 64 and (cm == np.diag(np.diag(cm))).all()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_PYTHON), "training/evaluate.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn_eval")
    synthetic.main(["--out", str(root), "--train", "0", "--val", "2", "--size", "128",
                    "--scene-width", "160", "--scene-height", "128"])
    return root


def test_cli_on_a_dataset_writes_json(tiny_checkpoint: Path, small_synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    proc = _run_cli("--model", str(tiny_checkpoint), "--data-root", str(small_synthetic), "--patch", "96",
                    "--stride", "64", "--batch-size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "foreground mIoU" in proc.stdout and "small_vehicle" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["pixels"] == 2 * 128 * 128 and len(metrics["per_class"]) == 16
    assert np.array(metrics["confusion"]).sum() == 2 * 128 * 128
    assert metrics["patch"] == 96 and metrics["split"] == "val"


def test_cli_accepts_the_reference_checkpoint_layout(tiny_model, small_synthetic: Path, tmp_path: Path) -> None:
    """A file in the released factseg50.pth layout (SimpleCV names, {'model': ...}) is evaluated unchanged."""
    reference = {native_to_reference_key(k): v for k, v in tiny_model.state_dict().items()}
    path = tmp_path / "factseg_reference.pth"
    torch.save({"model": reference, "global_step": 60000}, path)
    out = tmp_path / "m.json"
    proc = _run_cli("--model", str(path), "--image", str(small_synthetic / "scene" / "scene.tif"),
                    "--label", str(small_synthetic / "scene" / "scene_gt.tif"), "--patch", "128", "--stride", "96",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["pixels"] == 160 * 128


def test_cli_errors(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--model", str(tiny_checkpoint)])
    assert exc.value.code == 2 and "--data-root or --image" in capsys.readouterr().err
    assert evaluate_main(["--model", str(tiny_checkpoint), "--data-root", str(tmp_path)]) == 2
    assert "missing folder" in capsys.readouterr().err
    assert evaluate_main(["--model", str(tmp_path / "none.pt"), "--data-root", str(tmp_path)]) == 2
    assert "model file not found" in capsys.readouterr().err
