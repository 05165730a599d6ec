"""training/train.py end to end on CPU: the loss falls, resume is exact, torchrun (gloo) keeps ranks in step,
checkpoints are weights-only, and a short run on the real iSAID sample is evaluated by evaluate.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from project_paths import REPO_ROOT, VENV_PYTHON

from factseg_core import joint_loss, load_model
from factseg_core.checkpoint import read_checkpoint
from training import synthetic
from training.errors import ConfigError, TrainingError
from training.isaid import PatchDataset
from training.schedule import IterationBatches, poly_lr
from training.train_config import load_config
from training.weights import build_model, load_backbone_weights

TRAIN = ["training/train.py"]

#: The smallest useful setting: ResNet-18 with narrow FPN/decoders, 64-pixel crops.
TINY = {
    "model": {"backbone": "resnet18", "fpn_channels": 32, "decoder_channels": 32},
    "data": {"patch": 64, "stride": 64, "workers": 0},
    "train": {"iters": 4, "batch_size": 4, "lr": 0.02, "checkpoint_every": 2, "log_every": 1, "seed": 3},
    "eval": {"enabled": False, "patch": 128, "stride": 96},
}


def _config(tmp_path: Path, name: str = "tiny.yaml", **overrides: dict) -> Path:
    cfg = {k: dict(v) for k, v in TINY.items()}
    for section, values in overrides.items():
        cfg[section].update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    # one thread per process: exact, and far faster than two on a CPU shared with other work
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _train(*args: str, launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (launcher or [str(VENV_PYTHON)]) + TRAIN + list(args)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn_train")
    synthetic.main(["--out", str(root), "--train", "2", "--val", "1", "--size", "128", "--seed", "5", "--no-scene"])
    return root


# --- units ------------------------------------------------------------------------------------------------------

def test_poly_schedule_with_warmup() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.01, 0, 100, 0.9, warmup_iters=10, warmup_factor=0.1) == pytest.approx(0.001)
    assert poly_lr(0.01, 5, 100, 0.9, 10, 0.1) == pytest.approx(0.01 * 0.95**0.9 * 0.55)


def test_iteration_batches_shard_like_a_distributed_sampler() -> None:
    size, per_rank, world = 10, 2, 2
    ranks = [IterationBatches(size, per_rank, world, r, seed=1, start=0, total=5) for r in range(world)]
    batches = [list(s) for s in ranks]
    # within an epoch the ranks see disjoint items, and an epoch covers the dataset once
    first_epoch = [i for it in range(2) for r in range(world) for i, _ in batches[r][it]]
    assert sorted(first_epoch[:8]) == sorted(set(first_epoch[:8]))
    all_items = [i for it in range(5) for r in range(world) for i, _ in batches[r][it]]
    assert sorted(all_items[:10]) == list(range(10)) and sorted(all_items[10:20]) == list(range(10))
    # every (item, augmentation seed) is a function of the iteration alone: a resumed sampler agrees
    resumed = IterationBatches(size, per_rank, world, 1, seed=1, start=3, total=5)
    assert list(resumed) == batches[1][3:]
    assert len({seed for b in batches[0] for _, seed in b}) == 10


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\] in 'train'"):
        load_config(path)
    path.write_text("data:\n  patch: 100\n")
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(path)
    path.write_text("optimizer: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(path)


def test_shipped_configs_load() -> None:
    paper = load_config(REPO_ROOT / "training/configs/factseg_r50_isaid.yaml")
    assert paper.model.backbone == "resnet50" and paper.train.iters == 60000
    assert (paper.train.lr, paper.train.momentum, paper.train.weight_decay) == (0.007, 0.9, 1e-4)
    assert (paper.data.patch, paper.data.stride, paper.train.batch_size) == (896, 512, 8)
    assert paper.train.grad_clip == 35.0 and paper.train.sampling == "som"
    assert load_config(REPO_ROOT / "training/configs/demo.yaml").model.backbone == "resnet18"


def test_backbone_weights_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    from factseg_core.resnet import ResNetEncoder

    torch.manual_seed(1)
    donor = ResNetEncoder("resnet18")
    state = {**donor.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    model = build_model(load_config(_config(tmp_path)).model)
    load_backbone_weights(model, path)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in donor.state_dict().items())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(TrainingError, match="not a torchvision resnet18 state dict"):
        load_backbone_weights(model, tmp_path / "wrong.pth")
    with pytest.raises(TrainingError, match="file not found"):
        load_backbone_weights(model, tmp_path / "missing.pth")


# --- end to end -------------------------------------------------------------------------------------------------

def _fixed_batch_loss(model: torch.nn.Module, folder: Path) -> float:
    ds = PatchDataset(folder, augmentation=False)
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    model.train()
    with torch.no_grad():
        fg, bi = model(torch.stack(images))
        return float(joint_loss(fg, bi, torch.stack(labels), sampling="mean"))


def test_training_lowers_the_loss_and_writes_everything(data_root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, train={"iters": 6, "checkpoint_every": 3}, eval={"enabled": True})
    work = tmp_path / "run"
    proc = _train("--config", str(config), "--data-root", str(data_root), "--work-dir", str(work), "--threads", "1")
    cfg = load_config(config)
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg.model)
    trained = load_model(work / "final.pt")
    folder = work / "cache" / "train_p64_s64"
    before, after = _fixed_batch_loss(initial, folder), _fixed_batch_loss(trained, folder)
    assert after < 0.8 * before, (before, after)

    log = (work / "train.log").read_text()
    assert "iter 6/6 loss" in log and "eta 0:00:00" in log and "it/s" in log
    assert "evaluation on val" in log and "foreground mIoU" in log
    metrics = json.loads((work / "eval_val.json").read_text())
    assert metrics["pixels"] == 128 * 128 and 0.0 <= metrics["miou"] <= 1.0
    assert list((work / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((work / "config.yaml").read_text())["train"]["iters"] == 6
    assert {p.name for p in work.glob("*.pt")} == {"iter_000003.pt", "latest.pt", "final.pt"}
    latest = torch.load(work / "latest.pt", map_location="cpu", weights_only=True)  # plain data, no pickled objects
    assert latest["iteration"] == 6 and "momentum_buffer" in latest["optimizer"]["state"][0]
    assert latest["train_config"]["data"]["patch"] == 64 and isinstance(latest["rng"]["torch"], torch.Tensor)
    assert "train" in proc.stderr  # the tqdm bar


def test_resume_is_exact(data_root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, train={"deterministic": True})
    common = ["--config", str(config), "--data-root", str(data_root), "--threads", "1"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _train(*common, "--work-dir", str(straight))
    _train(*common, "--work-dir", str(interrupted), "--stop-at", "2")
    assert not (interrupted / "final.pt").exists()
    assert read_checkpoint(interrupted / "latest.pt")["iteration"] == 2
    proc = _train(*common, "--work-dir", str(interrupted), "--resume")
    assert "resumed from" in (interrupted / "train.log").read_text() and proc.returncode == 0
    a = read_checkpoint(straight / "final.pt")["model"]
    b = read_checkpoint(interrupted / "final.pt")["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    opt_a = read_checkpoint(straight / "latest.pt")["optimizer"]["state"]
    opt_b = read_checkpoint(interrupted / "latest.pt")["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_stay_identical(data_root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, train={"iters": 3, "checkpoint_every": 10})
    work = tmp_path / "ddp"
    launcher = [str(VENV_PYTHON), "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    _train("--config", str(config), "--data-root", str(data_root), "--work-dir", str(work), "--device", "cpu",
           launcher=launcher)
    log = (work / "train.log").read_text()
    assert "batch 4 over 2 process(es)" in log
    assert "parameters identical on all 2 ranks" in log
    assert read_checkpoint(work / "final.pt")["iteration"] == 3


def test_bad_data_root_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_PYTHON), *TRAIN, "--config", str(_config(tmp_path)), "--data-root",
                           str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and "missing folder" in proc.stderr and "Traceback" not in proc.stderr


def test_real_isaid_train_on_p0005_then_evaluate_p0003(isaid_sample: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, data={"patch": 256, "stride": 256},
                     train={"iters": 3, "batch_size": 2, "checkpoint_every": 10})
    work = tmp_path / "isaid"
    _train("--config", str(config), "--data-root", str(isaid_sample), "--work-dir", str(work), "--threads", "1")
    assert len(PatchDataset(work / "cache" / "train_p256_s256")) == 16  # 977×884 → 4×4 windows
    out = tmp_path / "p0003.json"
    proc = subprocess.run([str(VENV_PYTHON), "training/evaluate.py", "--model", str(work / "final.pt"),
                           "--data-root", str(isaid_sample), "--split", "val", "--patch", "512", "--stride", "512",
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    gt = {row["name"]: row["gt_pixels"] for row in metrics["per_class"]}
    # P0003's mask, mapped with the class table: these are its true pixel counts
    assert gt["background"] == 1098554 and gt["small_vehicle"] == 11720
    assert gt["large_vehicle"] == 62704 and gt["storage_tank"] == 403
    assert metrics["pixels"] == 1023 * 1147
    assert np.isfinite(metrics["miou"]) and "mIoU" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_training_step(data_root: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, train={"iters": 2, "amp": "auto"})
    work = tmp_path / "cuda"
    _train("--config", str(config), "--data-root", str(data_root), "--work-dir", str(work), "--device", "cuda")
    assert "amp bf16" in (work / "train.log").read_text() or "amp fp16" in (work / "train.log").read_text()
    assert load_model(work / "final.pt").config.backbone == "resnet18"


def test_scripts_run_from_any_directory(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_PYTHON), str(REPO_ROOT / "training/train.py"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--backbone-weights" in proc.stdout
