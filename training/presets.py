"""Fine-tuning recipes by name: ``cpu`` and ``gpu`` presets, and ``auto`` = the one that fits the device.

A preset is a YAML file of ``training/configs/`` that travels with the plugin zip, so a local worker (or any
worker) resolves a name to a file of its own and no path ever crosses the wire. ``auto`` picks by the device
the training will really run on: CUDA gets the GPU recipe (512² crops, batch 8, 2000 iterations: minutes on a
GPU, hours on a CPU), anything else the CPU recipe (small crops, few iterations, a frozen encoder early on).
"""
from __future__ import annotations

from pathlib import Path

from factseg_contract.layout import AUTO_PRESET, TRAINING_PRESETS

from .errors import TrainingError

CONFIGS = Path(__file__).resolve().parent / "configs"
#: Preset name → YAML file in ``training/configs/`` (the contract's table).
PRESETS = TRAINING_PRESETS
AUTO = AUTO_PRESET


def preset_names() -> tuple[str, ...]:
    """Every name ``preset_path`` and ``resolve_config`` accept (``auto`` first)."""
    return (AUTO, *PRESETS)


def default_preset(device: str) -> str:
    """The preset for a device string (``cuda``, ``cuda:1``, ``cpu``, ``mps``…): ``gpu`` on CUDA, else ``cpu``."""
    return "gpu" if str(device).strip().lower().startswith("cuda") else "cpu"


def preset_path(name: str, device: str = "cpu") -> Path:
    """The YAML file of preset ``name`` (``auto`` resolved for ``device``); a clear error for an unknown name."""
    key = str(name).strip().lower()
    if key == AUTO:
        key = default_preset(device)
    if key not in PRESETS:
        raise TrainingError(f"unknown training preset {name!r}: choose one of {', '.join(preset_names())}")
    path = CONFIGS / PRESETS[key]
    if not path.is_file():
        raise TrainingError(f"the training preset {key!r} is missing its file {path}")
    return path


def is_preset(value: str) -> bool:
    """True when ``value`` names a preset rather than a file."""
    return str(value).strip().lower() in preset_names()


def resolve_config(value: str, device: str) -> Path:
    """``--config``: a preset name (resolved for ``device``) or the path of a YAML file."""
    return preset_path(value, device) if is_preset(value) else Path(value)


def resolved_device(device: str) -> str:
    """``auto`` as the trainer will resolve it (CUDA when torch sees a GPU), other device strings unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
