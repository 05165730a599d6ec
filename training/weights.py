"""The model a run starts from: its class table, and where its first weights come from.

Three starts: random (the seed decides), an ImageNet ResNet for the encoder (``--backbone-weights``, a local
torchvision state dict), or another FactSeg (``--init-from``: our checkpoints or the released
``factseg50.pth``), whose matching weights are copied by :mod:`factseg_core.transfer`.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from factseg_core import FactSeg, FactSegConfig
from factseg_core.checkpoint import CheckpointError
from factseg_core.classes import ISAID_CLASSES, ClassInfo
from factseg_core.transfer import SourceWeights, TransferReport, read_source_weights, transfer_weights

from .errors import TrainingError


def resolve_model(config: FactSegConfig, data_classes: tuple[ClassInfo, ...] | None,
                  source: SourceWeights | None) -> tuple[FactSegConfig, tuple[ClassInfo, ...]]:
    """The architecture and class table of a run.

    The architecture is the init checkpoint's when there is one (fine-tuning a model means keeping its
    backbone and widths), else the config's. The class table is the data root's ``classes.json`` when
    present, else the init checkpoint's, else iSAID's.
    """
    if source is not None:
        config = source.config
    if data_classes is not None:
        return dataclasses.replace(config, num_classes=len(data_classes)), data_classes
    if source is not None and source.classes is not None:
        return config, source.classes
    if config.num_classes == len(ISAID_CLASSES):
        return config, ISAID_CLASSES
    raise TrainingError(f"model.num_classes is {config.num_classes} but the data root has no classes.json to name "
                        f"them; add one (see training/class_table.py) or use the 16 iSAID classes")


def read_init_weights(path: str | os.PathLike) -> SourceWeights:
    """The weights ``--init-from`` names (ours or the released factseg50.pth), under our parameter names."""
    try:
        return read_source_weights(path)
    except CheckpointError as exc:
        raise TrainingError(f"--init-from: {exc}") from None


def transfer_from(model: FactSeg, source: SourceWeights) -> TransferReport:
    """Copy every weight of ``source`` whose name and shape match; another class table gets new heads."""
    try:
        return transfer_weights(model, source)
    except CheckpointError as exc:
        raise TrainingError(f"--init-from: {exc}") from None


def build_model(config: FactSegConfig, classes: tuple[ClassInfo, ...] | None = None) -> FactSeg:
    """A freshly initialised FactSeg (the torch seed decides its weights)."""
    return FactSeg(config, classes)


def load_backbone_weights(model: FactSeg, path: str | os.PathLike) -> None:
    """Initialise the encoder from a local torchvision ResNet state dict (ImageNet weights)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"--backbone-weights: file not found: {path}") from None
    except Exception as exc:
        raise TrainingError(f"--backbone-weights: cannot read {path} as a weights-only torch file: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.encoder.load_torchvision_weights(state)
    except RuntimeError as exc:
        raise TrainingError(f"--backbone-weights: {path} is not a torchvision {model.config.backbone} state dict: "
                            f"{str(exc).splitlines()[0]}") from None
