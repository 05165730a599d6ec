"""The training configuration, typed: four sections read from YAML, every key checked for name and type.

A config file may set any subset of the keys below; nothing else. Defaults come from where they are defined
once: the architecture from :class:`factseg_core.FactSegConfig`, the window grid from
:mod:`factseg_core.config`; the optimisation defaults are the paper's recipe (SGD 0.007, momentum 0.9,
weight decay 1e-4, poly 0.9, clip 35, batch 8, 60k iterations).

    model:  FactSegConfig fields (backbone, num_classes, fpn_channels, decoder_channels)
    data:   splits, crop grid (patch, stride), augmentation, loader/prepare workers, cache folder
    train:  optimisation (iterations, batch, learning rate and schedule, AMP, seeds, checkpoints, logging)
    eval:   the final sliding-window evaluation on the val split

``num_classes`` is replaced by the size of the data root's ``classes.json`` when there is one (see
:mod:`training.class_table`).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from factseg_core import FactSegConfig
from factseg_core.config import PATCH_SIZE, SIZE_DIVISOR, SOM_RATIO, STRIDE
from factseg_core.resnet import RESNET_SPECS

from .errors import ConfigError

SAMPLINGS = ("som", "ohem", "mean")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class DataConfig:
    """Where the patches come from and how they are cut and augmented."""

    train_split: str = "train"
    val_split: str = "val"
    patch: int = PATCH_SIZE
    stride: int = STRIDE
    augment: bool = True  # flips and rot90; padding is labelled ignore
    workers: int = 2  # DataLoader worker processes
    prepare_workers: int = 1  # processes cutting the images into cached patches (once)
    cache_dir: str | None = None  # default: WORK_DIR/cache


@dataclass
class OptimConfig:
    """The optimisation: SGD with a poly schedule, joint CP loss with small-object mining."""

    iters: int = 60000
    batch_size: int = 8  # global batch, split over the torchrun processes
    lr: float = 0.007
    encoder_lr_mult: float = 1.0  # the encoder's learning rate is lr × this (fine-tuning: < 1)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    grad_clip: float = 35.0  # 0: no clipping
    sampling: str = "som"
    som_ratio: float = SOM_RATIO
    amp: str = "auto"
    channels_last: bool = True
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    log_every: int = 20
    dist_timeout_min: int = 120


@dataclass
class EvalConfig:
    """The evaluation after training (per-class IoU on the val split, by the worker's engine)."""

    enabled: bool = True
    patch: int = PATCH_SIZE
    stride: int = STRIDE
    batch_size: int = 1
    tta: bool = False


@dataclass
class TrainConfig:
    """A whole training configuration (the YAML file's four sections)."""

    model: FactSegConfig = field(default_factory=FactSegConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data (for ``config.yaml`` and the checkpoints' ``train_config``)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def validate(self, source: str = "config") -> None:
        """Check the values that types alone do not (ranges, choices); raise ConfigError with one sentence."""
        _validate(self, source)


#: YAML section name → its dataclass.
SECTIONS: dict[str, type] = {"model": FactSegConfig, "data": DataConfig, "train": OptimConfig, "eval": EvalConfig}


def _type_error(where: str, kind: str, value: Any) -> ConfigError:
    hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and kind == "a number" else ""
    return ConfigError(f"{where} must be {kind}, got {value!r}{hint}")


def _coerce(where: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (int, float, bool, str, or one of them | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(where, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(where, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(where, "text", value)
        return value
    raise TypeError(f"{where}: unsupported annotation {hint!r}")


def section_from_dict(name: str, values: Any, source: str = "config") -> Any:
    """Build section ``name`` from a mapping, refusing unknown keys and values of the wrong type."""
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in {name!r}; known: {sorted(known)}")
    return cls(**{k: _coerce(f"{source}: {name}.{k}", hints[k], v) for k, v in values.items()})


def config_from_dict(raw: Any, source: str = "config") -> TrainConfig:
    """A validated TrainConfig from plain data (a parsed YAML file, or ``TrainConfig.to_dict()``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {sorted(SECTIONS)}")
    unknown = [s for s in raw if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown section {unknown[0]!r}; sections are {sorted(SECTIONS)}")
    cfg = TrainConfig(**{name: section_from_dict(name, values, source) for name, values in raw.items()})
    cfg.validate(source)
    return cfg


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and check a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return config_from_dict(raw, str(path))


def _validate(cfg: TrainConfig, source: str) -> None:
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    if m.backbone not in RESNET_SPECS:
        raise ConfigError(f"{source}: model.backbone must be one of {sorted(RESNET_SPECS)}, got {m.backbone!r}")
    if m.num_classes < 2 or m.fpn_channels < 1 or m.decoder_channels < 1:
        raise ConfigError(f"{source}: model.num_classes must be ≥ 2 and the channel widths ≥ 1")
    for name, grid in (("data", d), ("eval", e)):
        if grid.patch < SIZE_DIVISOR or grid.patch % SIZE_DIVISOR:
            raise ConfigError(f"{source}: {name}.patch {grid.patch} must be a multiple of {SIZE_DIVISOR}")
        if not 0 < grid.stride <= grid.patch:
            raise ConfigError(f"{source}: {name}.stride must be in 1..patch, got {grid.stride}")
    if t.sampling not in SAMPLINGS:
        raise ConfigError(f"{source}: train.sampling must be som, ohem or mean, got {t.sampling!r}")
    if t.amp not in AMP_MODES:
        raise ConfigError(f"{source}: train.amp must be auto, off, bf16 or fp16, got {t.amp!r}")
    if t.iters < 1 or t.batch_size < 1 or e.batch_size < 1:
        raise ConfigError(f"{source}: train.iters, train.batch_size and eval.batch_size must be ≥ 1")
    if t.lr <= 0 or t.encoder_lr_mult < 0 or not 0 < t.som_ratio <= 1:
        raise ConfigError(f"{source}: train.lr must be > 0, train.encoder_lr_mult ≥ 0 and train.som_ratio in (0, 1]")
    if t.checkpoint_every < 1 or t.log_every < 1 or t.keep_checkpoints < 0:
        raise ConfigError(f"{source}: train.checkpoint_every and train.log_every must be ≥ 1, keep_checkpoints ≥ 0")
    if d.workers < 0 or d.prepare_workers < 1:
        raise ConfigError(f"{source}: data.workers must be ≥ 0 and data.prepare_workers ≥ 1")
