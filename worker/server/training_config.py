"""The training configuration of a remote job, built by the worker: a preset of its own plus checked overrides.

A remote client never hands the trainer a file. It may name one of the worker's shipped presets
(``training/configs/NAME.yaml``) and override a fixed set of keys, each type- and range-checked here; an
uploaded ``config.yaml`` is read the same way (as overrides). Keys that name a place (``data.cache_dir``,
``data.train_split``, ``data.val_split``) are not in the set, and are dropped even from a preset, so the trainer
reads only the job's ``data/`` folder and writes only into its ``run/`` folder (caches default to
``run/cache``). The trainer checks the whole config again when it starts.

    build_job_config(preset_name | None, overrides, job_dir, device) -> job_dir / "config.yaml"
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..client.protocol import ProtocolError
from ..contract import AUTO_PRESET, MAX_PATCH, TRAINING_PRESETS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Keys a preset may hold but a job never keeps: they name places on the worker.
PATH_KEYS = {"data": ("cache_dir", "train_split", "val_split")}
#: An uploaded config.yaml is small; anything larger is not a config.
MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True)
class Rule:
    """One allowed key: its type (``int``, ``float``, ``bool`` or a tuple of choices) and its range."""

    kind: Any
    low: float = -math.inf
    high: float = math.inf

    def check(self, where: str, value: Any) -> Any:
        if isinstance(self.kind, tuple):
            if value not in self.kind:
                raise _refuse(f"{where} must be one of {', '.join(map(str, self.kind))}, got {_show(value)}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise _refuse(f"{where} must be true or false, got {_show(value)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int else (int, float)):
            raise _refuse(f"{where} must be {'an integer' if self.kind is int else 'a number'}, got {_show(value)}")
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise _refuse(f"{where} must lie in [{self.low:g}, {self.high:g}], got {_show(value)}")
        return self.kind(value)


INT, NUM, FLAG = int, float, bool
#: What a remote client may choose, section by section (the names and types of training.train_config).
ALLOWED: dict[str, dict[str, Rule]] = {
    "model": {"backbone": Rule(("resnet18", "resnet34", "resnet50", "resnet101")),
              "num_classes": Rule(INT, 2, 255), "fpn_channels": Rule(INT, 1, 1024),
              "decoder_channels": Rule(INT, 1, 1024)},
    "data": {"patch": Rule(INT, 32, MAX_PATCH), "stride": Rule(INT, 1, MAX_PATCH), "augment": Rule(FLAG),
             "workers": Rule(INT, 0, 16), "prepare_workers": Rule(INT, 1, 16)},
    "train": {"iters": Rule(INT, 1, 1_000_000), "batch_size": Rule(INT, 1, 1024), "lr": Rule(NUM, 1e-12, 10.0),
              "encoder_lr_mult": Rule(NUM, 0.0, 100.0), "momentum": Rule(NUM, 0.0, 1.0),
              "weight_decay": Rule(NUM, 0.0, 1.0), "power": Rule(NUM, 0.0, 10.0), "warmup_iters": Rule(INT, 0, 1_000_000),
              "warmup_factor": Rule(NUM, 0.0, 1.0), "grad_clip": Rule(NUM, 0.0, 1e6),
              "sampling": Rule(("som", "ohem", "mean")), "som_ratio": Rule(NUM, 1e-6, 1.0),
              "amp": Rule(("auto", "off", "bf16", "fp16")), "channels_last": Rule(FLAG), "seed": Rule(INT, 0, 2**31 - 1),
              "deterministic": Rule(FLAG), "checkpoint_every": Rule(INT, 1, 1_000_000),
              "keep_checkpoints": Rule(INT, 0, 5), "log_every": Rule(INT, 1, 1_000_000)},
    "eval": {"enabled": Rule(FLAG), "patch": Rule(INT, 32, MAX_PATCH), "stride": Rule(INT, 1, MAX_PATCH),
             "batch_size": Rule(INT, 1, 64), "tta": Rule(FLAG)},
}


def _show(value: Any) -> str:
    return repr(value)[:40]


def _refuse(text: str) -> ProtocolError:
    return ProtocolError(text, "bad_config")


def presets() -> list[str]:
    """The names of this worker's shipped training presets."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if PRESET_NAME.fullmatch(p.stem))


#: Preset names that stand for a recipe file of training/configs/ (the contract's table).
ALIASES = {name: Path(file).stem for name, file in TRAINING_PRESETS.items()}
AUTO = AUTO_PRESET


def default_preset(device: str) -> str:
    """The preset for the device the job will train on: ``gpu`` on CUDA, else ``cpu`` (hours become minutes)."""
    if device == AUTO:
        import torch  # the worker's own process has torch; resolve "auto" as the trainer will

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "gpu" if str(device).lower().startswith("cuda") else "cpu"


def preset_path(name: str, device: str = AUTO) -> Path:
    """The file of preset ``name`` (``auto``, ``cpu``, ``gpu`` or a shipped file's stem), looked up among the
    shipped names, so no name can reach another path."""
    if name == AUTO:
        name = default_preset(device)
    stem = ALIASES.get(name, name)
    if not isinstance(name, str) or not PRESET_NAME.fullmatch(name) or stem not in presets():
        names = ", ".join([AUTO, *ALIASES, *presets()])
        raise _refuse(f"no training preset {_show(name)} on this worker; it has {names}")
    return CONFIG_DIR / f"{stem}.yaml"


def check_overrides(overrides: Any, source: str = "overrides") -> dict[str, dict[str, Any]]:
    """``overrides`` with every section and key allowed and every value checked (else ``bad_config``)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise _refuse(f"{source} must be a mapping of sections ({', '.join(ALLOWED)})")
    checked: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        rules = ALLOWED.get(section) if isinstance(section, str) else None
        if rules is None:
            raise _refuse(f"{source}: {_show(section)} is not a section a client may set ({', '.join(ALLOWED)})")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise _refuse(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            rule = rules.get(key) if isinstance(key, str) else None
            if rule is None:
                place = " (paths on the worker are not a client's choice)" if key in PATH_KEYS.get(section, ()) else ""
                raise _refuse(f"{source}: {section}.{_show(key)} is not a key a client may set{place}")
            checked.setdefault(section, {})[key] = rule.check(f"{source}: {section}.{key}", value)
    return checked


def read_uploaded_config(path: Path) -> dict[str, dict[str, Any]]:
    """An uploaded ``config.yaml`` as checked overrides (plain YAML only: no tags, no aliases to objects)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _refuse(f"config.yaml is larger than {MAX_CONFIG_BYTES // 1024} KiB")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _refuse(f"config.yaml is not a readable YAML mapping ({type(exc).__name__})") from None
    return check_overrides(raw, "config.yaml")


def _merge(base: dict[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(values or {}) for section, values in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def build_job_config(preset_name: str | None, overrides: Mapping[str, Any] | None, job_dir: str | os.PathLike,
                     device: str = "auto") -> Path:
    """Write the job's config (preset + checked overrides, no path keys) to ``job_dir/config.yaml``; return it.

    ``preset_name``: ``auto`` (None too: :func:`default_preset` for ``device``), ``cpu``, ``gpu`` or one of :func:`presets`. ``overrides``:
    sections of allowed keys (already checked ones pass again unchanged). Raises ProtocolError ``bad_config``.
    """
    loaded = yaml.safe_load(preset_path(preset_name or AUTO, device).read_text(encoding="utf-8")) or {}
    base = {section: dict(values or {}) for section, values in loaded.items()}
    config = _merge(base, check_overrides(overrides))
    for section, keys in PATH_KEYS.items():
        for key in keys:
            config.get(section, {}).pop(key, None)
    path = Path(job_dir) / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
