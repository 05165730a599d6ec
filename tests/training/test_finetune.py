"""Fine-tuning on one's own classes: classes.json, --init-from (ours and the reference layout), the class table
travelling from the data to the checkpoint, evaluate.py and the worker's info; the typed config's errors."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from project_paths import REPO_ROOT, VENV_PYTHON

from factseg_core import FactSeg, FactSegConfig, load_model, save_checkpoint
from factseg_core.checkpoint import native_to_reference_key
from factseg_core.classes import ISAID_CLASSES
from factseg_core.transfer import CLASS_HEAD_PREFIXES
from training import synthetic
from training.class_table import ClassTableError, read_class_table
from training.errors import ConfigError, TrainingCancelled
from training.train_config import load_config
from training.trainer import Trainer

TINY = {
    "model": {"backbone": "resnet18", "fpn_channels": 32, "decoder_channels": 32},
    "data": {"patch": 64, "stride": 64, "workers": 0},
    "train": {"iters": 3, "batch_size": 2, "lr": 0.02, "encoder_lr_mult": 0.1, "checkpoint_every": 10,
              "log_every": 1, "seed": 4},
    "eval": {"enabled": False, "patch": 128, "stride": 96},
}


def _config_file(tmp_path: Path, **overrides: dict) -> Path:
    cfg = {k: {**v, **overrides.get(k, {})} for k, v in TINY.items()}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    """Synthetic images labelled with three user classes and their classes.json (as the QGIS export writes)."""
    root = tmp_path_factory.mktemp("user_classes")
    synthetic.main(["--out", str(root), "--train", "2", "--val", "1", "--size", "128", "--seed", "2", "--no-scene",
                    "--user-classes"])
    return root


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory) -> Path:
    """A trained-looking iSAID model of the tiny architecture (random weights, perturbed BN statistics)."""
    torch.manual_seed(11)
    model = FactSeg(FactSegConfig("resnet18", 16, 32, 32))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("source") / "isaid_tiny.pt"
    save_checkpoint(model, path)
    return path


def _heads(name: str) -> bool:
    return name.startswith(CLASS_HEAD_PREFIXES)


def _check_transfer(trainer: Trainer, source: dict[str, torch.Tensor]) -> None:
    own = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    kept = [k for k in own if not _heads(k)]
    assert kept and all(torch.equal(own[k], source[k]) for k in kept), "encoder/FPN/decoder must be bit-identical"
    encoder = [k for k in kept if k.startswith("encoder.")]
    assert len(encoder) > 100
    assert own["fg_head.weight"].shape == (4, 32, 1, 1) and source["fg_head.weight"].shape == (16, 32, 1, 1)
    assert not torch.equal(own["bi_head.weight"], source["bi_head.weight"])  # same shape, re-initialised
    assert trainer.transfer is not None and trainer.transfer.heads_reinitialised
    assert set(trainer.transfer.new) == {"fg_head.weight", "fg_head.bias", "bi_head.weight", "bi_head.bias"}
    assert set(trainer.transfer.kept) == set(kept)


def test_init_from_another_class_table_keeps_everything_but_the_heads(user_data, source_checkpoint, tmp_path):
    config = load_config(_config_file(tmp_path))
    source = load_model(source_checkpoint).state_dict()
    trainer = Trainer(config, user_data, tmp_path / "run", init_from=source_checkpoint, progress_bar=False)
    _check_transfer(trainer, source)
    assert [c.name for c in trainer.model.classes] == ["background", "vehicle", "vessel", "tank"]
    assert trainer.config.model.num_classes == 4
    log = (tmp_path / "run" / "train.log").read_text()
    assert "kept " in log and "new 4 (another class table: heads re-initialised)" in log
    # the encoder learns at a tenth of the rate: two parameter groups
    assert [g["lr_mult"] for g in trainer.optimizer.param_groups] == [0.1, 1.0]
    images, labels = torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long)
    trainer.net.train()
    result = trainer.step(images, labels)
    assert trainer.iteration == 1 and result.lr == pytest.approx(0.02)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.002)


def test_init_from_the_reference_layout(user_data, source_checkpoint, tmp_path):
    """The released factseg50.pth layout (SimpleCV names, ``module.`` prefix) converts and transfers the same."""
    native = load_model(source_checkpoint).state_dict()
    reference = {f"module.{native_to_reference_key(k)}": v for k, v in native.items()}
    path = tmp_path / "factseg_reference.pth"
    torch.save({"model": reference, "global_step": 1}, path)
    trainer = Trainer(load_config(_config_file(tmp_path)), user_data, tmp_path / "run", init_from=path,
                      progress_bar=False)
    _check_transfer(trainer, native)


def test_same_class_table_keeps_the_heads(tmp_path, source_checkpoint, user_data):
    data = tmp_path / "isaid_like"
    synthetic.main(["--out", str(data), "--train", "1", "--val", "0", "--size", "64", "--no-scene"])
    trainer = Trainer(load_config(_config_file(tmp_path)), data, tmp_path / "run", init_from=source_checkpoint,
                      progress_bar=False)
    assert trainer.transfer.new == () and not trainer.transfer.heads_reinitialised
    assert trainer.model.classes == ISAID_CLASSES


def test_finetune_cli_class_table_reaches_checkpoint_evaluate_and_worker(user_data, source_checkpoint, tmp_path):
    work = tmp_path / "ft"
    cmd = [str(VENV_PYTHON), "training/train.py", "--config", str(_config_file(tmp_path, eval={"enabled": True})),
           "--data-root", str(user_data), "--work-dir", str(work), "--init-from", str(source_checkpoint),
           "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [c.to_dict() for c in read_class_table(user_data)]
    final = torch.load(work / "final.pt", map_location="cpu", weights_only=True)
    assert final["classes"] == table and final["config"]["num_classes"] == 4
    assert "vessel" in (work / "train.log").read_text()  # the final evaluation's table names the classes
    assert [r["name"] for r in json.loads((work / "eval_val.json").read_text())["per_class"]][1:] == [
        "vehicle", "vessel", "tank"]
    proc = subprocess.run([str(VENV_PYTHON), "training/evaluate.py", "--model", str(work / "final.pt"),
                           "--data-root", str(user_data), "--patch", "128", "--stride", "128", "--device", "cpu"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0 and "tank" in proc.stdout and "vehicle" in proc.stdout, proc.stderr[-2000:]

    from worker.client import WorkerClient, start_local_worker

    endpoint = f"ipc://{tmp_path}/w.sock"
    with start_local_worker(str(VENV_PYTHON), str(work / "final.pt"), endpoint=endpoint, device="cpu",
                            pythonpath=str(REPO_ROOT)) as worker, WorkerClient(worker.endpoint) as client:
        info = client.info()
    assert [c["name"] for c in info["classes"]] == ["background", "vehicle", "vessel", "tank"]
    assert [c["color"] for c in info["classes"]] == [c["color"] for c in table]


def test_cancel_saves_latest_and_raises(user_data, tmp_path):
    calls = []

    def progress(iteration: int, loss: float, lr: float, eta_s: float) -> None:
        calls.append((iteration, loss, lr, eta_s))

    trainer = Trainer(load_config(_config_file(tmp_path)), user_data, tmp_path / "run", progress=progress,
                      should_stop=lambda: len(calls) >= 2, progress_bar=False)
    with pytest.raises(TrainingCancelled, match="cancelled at iteration 2 of 3"):
        trainer.run()
    assert [c[0] for c in calls] == [1, 2] and all(c[1] > 0 and c[3] >= 0 for c in calls)
    assert (tmp_path / "run" / "latest.pt").is_file() and not (tmp_path / "run" / "final.pt").exists()
    resumed = Trainer(load_config(_config_file(tmp_path)), user_data, tmp_path / "run", resume=True,
                      progress_bar=False)
    assert resumed.iteration == 2 and resumed.run() == tmp_path / "run" / "final.pt"


def test_bad_class_table_and_config_types(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps([{"id": 0, "name": "road", "color": [0, 0, 0]},
                                                       {"id": 1, "name": "car", "color": [9, 9, 9]}]))
    with pytest.raises(ClassTableError, match="class 0 must be 'background'"):
        read_class_table(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps([{"id": 0, "name": "background", "color": [0, 0, 0]},
                                                       {"id": 2, "name": "car", "color": [9, 9, 9]}]))
    with pytest.raises(ClassTableError, match="entry 1 has id 2"):
        read_class_table(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  weight_decay: 1e-4\n")
    with pytest.raises(ConfigError, match=r"train.weight_decay must be a number, got '1e-4' \(YAML reads"):
        load_config(bad)
    bad.write_text("data:\n  augment: 1\n")
    with pytest.raises(ConfigError, match="data.augment must be true or false"):
        load_config(bad)
    bad.write_text("model:\n  backbone: vgg16\n")
    with pytest.raises(ConfigError, match="model.backbone must be one of"):
        load_config(bad)
    assert load_config(REPO_ROOT / "training/configs/finetune.yaml").train.encoder_lr_mult == 0.1


def test_evaluate_refuses_a_model_of_other_classes(user_data, source_checkpoint):
    proc = subprocess.run([str(VENV_PYTHON), "training/evaluate.py", "--model", str(source_checkpoint), "--data-root",
                           str(user_data), "--device", "cpu"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 2 and "are not those of" in proc.stderr and "vessel" in proc.stderr
