"""Fine-tuning presets: chosen by the worker's device, resolvable by name, and each a valid recipe."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from worker_support import make_export

from training.errors import TrainingError
from training.presets import CONFIGS, default_preset, preset_names, preset_path, resolve_config
from training.train import config_with_overrides, parse_args
from training.train_config import load_config


@pytest.mark.parametrize(("device", "preset"), [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:1", "gpu"),
                                                ("CUDA:0", "gpu"), ("mps", "cpu")])
def test_the_preset_follows_the_device(device, preset):
    assert default_preset(device) == preset
    assert preset_path("auto", device) == preset_path(preset)


def test_every_preset_is_a_valid_recipe_of_its_own():
    files = {name: preset_path(name) for name in preset_names() if name != "auto"}
    assert set(files) == {"cpu", "gpu"} and len(set(files.values())) == 2
    cpu, gpu = load_config(files["cpu"]), load_config(files["gpu"])
    assert all(path.parent == CONFIGS for path in files.values())
    # The CPU recipe is the short one: fewer pixels per iteration and fewer iterations than the GPU recipe.
    assert cpu.data.patch ** 2 * cpu.train.batch_size * cpu.train.iters < (
        gpu.data.patch ** 2 * gpu.train.batch_size * gpu.train.iters) / 20
    assert gpu.data.patch == 512 and gpu.train.batch_size == 8


def test_unknown_names_and_files():
    with pytest.raises(TrainingError, match="unknown training preset 'tpu': choose one of auto, cpu, gpu"):
        preset_path("tpu")
    assert resolve_config("GPU", "cpu") == preset_path("gpu")
    assert resolve_config("my/recipe.yaml", "cpu") == Path("my/recipe.yaml")


def test_train_command_line_takes_a_preset_name(tmp_path):
    """``python -m training.train --config auto`` on a CPU is the cpu recipe; --max-iters still overrides it."""
    data = make_export(tmp_path / "export")
    args = parse_args(["--config", "auto", "--device", "cpu", "--data-root", str(data), "--work-dir",
                       str(tmp_path / "run"), "--max-iters", "7"])
    cfg = config_with_overrides(args)
    expected = load_config(preset_path("cpu"))
    assert cfg == dataclasses.replace(expected, train=dataclasses.replace(expected.train, iters=7))
