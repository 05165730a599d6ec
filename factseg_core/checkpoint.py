"""Saving and loading FactSeg weights: this project's checkpoints and the released reference ``factseg50.pth``.

Everything is read with ``torch.load(weights_only=True)``: a checkpoint file is data, never code.

Our checkpoint: ``{"format": "factseg-qgis", "version": 1, "model": state_dict, "config": {...},
"classes": [{"id", "name", "color"}, ...]}`` plus training state (optimizer, scaler, iteration) when written
by training. The reference layout (SimpleCV): ``{"model", "opt", "global_step"}`` or a bare state dict, keys
maybe prefixed ``module.``, names mapped to ours by :data:`REFERENCE_KEY_RULES`.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from factseg_contract.class_table import ClassTableError, check_class_table

from .classes import ISAID_CLASSES, ClassInfo, classes_from_dicts, classes_to_dicts
from .model import FactSeg, FactSegConfig
from .model_card import CARD_KEY, ModelCardError, card_from_checkpoint, derived_card

FORMAT_NAME = "factseg-qgis"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A weight file that cannot be used, with the reason in plain words."""


#: (reference pattern, native replacement), applied in order; the first match wins.
REFERENCE_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^resencoder\.resnet\.(.+)$", r"encoder.\1"),
    (r"^(fg|bi)fpn\.fpn_inner([1-4])\.(weight|bias)$", r"\1_fpn.lateral.<\2>.\3"),
    (r"^(fg|bi)fpn\.fpn_layer([1-4])\.(weight|bias)$", r"\1_fpn.output.<\2>.\3"),
    (r"^(fg|bi)_decoder\.blocks\.(\d+)\.(\d+)\.0\.weight$", r"\1_decoder.stages.\2.\3.conv.weight"),
    (r"^(fg|bi)_decoder\.blocks\.(\d+)\.(\d+)\.1\.(.+)$", r"\1_decoder.stages.\2.\3.bn.\4"),
    (r"^(fg|bi)_cls\.(weight|bias)$", r"\1_head.\2"),
)
_NATIVE_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.(.+)$", r"resencoder.resnet.\1"),
    (r"^(fg|bi)_fpn\.lateral\.(\d)\.(weight|bias)$", r"\1fpn.fpn_inner<+\2>.\3"),
    (r"^(fg|bi)_fpn\.output\.(\d)\.(weight|bias)$", r"\1fpn.fpn_layer<+\2>.\3"),
    (r"^(fg|bi)_decoder\.stages\.(\d+)\.(\d+)\.conv\.weight$", r"\1_decoder.blocks.\2.\3.0.weight"),
    (r"^(fg|bi)_decoder\.stages\.(\d+)\.(\d+)\.bn\.(.+)$", r"\1_decoder.blocks.\2.\3.1.\4"),
    (r"^(fg|bi)_head\.(weight|bias)$", r"\1_cls.\2"),
)


def _apply_rules(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, replacement in rules:
        if re.match(pattern, key):
            renamed = re.sub(pattern, replacement, key)
            # FPN levels are numbered from 1 in the reference and from 0 here.
            renamed = re.sub(r"<\+(\d)>", lambda m: str(int(m.group(1)) + 1), renamed)
            return re.sub(r"<(\d)>", lambda m: str(int(m.group(1)) - 1), renamed)
    return None


def reference_to_native_key(key: str) -> str | None:
    """Our parameter name for a reference (SimpleCV FactSeg) name, or None if it is not one."""
    return _apply_rules(key, REFERENCE_KEY_RULES)


def native_to_reference_key(key: str) -> str | None:
    """The reference parameter name for one of ours (used to build reference-layout files in tests)."""
    return _apply_rules(key, _NATIVE_KEY_RULES)


def infer_reference_config(state: Mapping[str, torch.Tensor]) -> FactSegConfig:
    """Backbone depth and class count of a reference-layout state dict, read from its keys and shapes."""
    try:
        num_classes = int(state["fg_cls.weight"].shape[0])
        decoder_channels = int(state["fg_cls.weight"].shape[1])
        fpn_channels = int(state["fgfpn.fpn_inner1.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"not a FactSeg state dict: no {exc.args[0]!r}") from None
    except IndexError:
        raise CheckpointError("not a FactSeg state dict: fg_cls.weight or fgfpn.fpn_inner1.weight has too few "
                              "dimensions") from None
    bottleneck = "resencoder.resnet.layer1.0.conv3.weight" in state
    layer3 = {int(k.split(".")[3]) for k in state if k.startswith("resencoder.resnet.layer3.")}
    depth = {(True, 6): "resnet50", (True, 23): "resnet101", (False, 6): "resnet34", (False, 2): "resnet18"}
    backbone = depth.get((bottleneck, len(layer3)))
    if backbone is None:
        raise CheckpointError(f"unrecognised ResNet depth in checkpoint ({len(layer3)} blocks in layer3)")
    return FactSegConfig(backbone, num_classes, fpn_channels, decoder_channels)


def convert_reference_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference-layout state dict to ours; unknown names raise a CheckpointError listing them."""
    converted, unexpected = {}, []
    for key, value in state.items():
        native = reference_to_native_key(key)
        if native is None:
            unexpected.append(key)
        else:
            converted[native] = value
    if unexpected:
        raise CheckpointError(f"unexpected keys in reference checkpoint: {_short_list(unexpected)}")
    return converted


def _short_list(keys: list[str], limit: int = 8) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(sorted(keys)[:limit]) + more


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, in a few words: never torch's advice to load it with weights_only=False,
    which would run code from the file; torch's own first line says little for a damaged file."""
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text:
        return "it holds Python objects, not only weights, and is not loaded for safety"
    return "not a PyTorch weights file, or a damaged one"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file safely (weights only) and turn every failure into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file is empty: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated or unsafe files
        raise CheckpointError(f"{path} is not a FactSeg model file ({_load_failure(exc)})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"model file {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return dict(obj)


def model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> FactSeg:
    """Build a FactSeg from a loaded checkpoint dict (ours, SimpleCV's, or a bare state dict), strictly."""
    if ckpt.get("format") == FORMAT_NAME:
        version = ckpt.get("version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: checkpoint format version {version!r} is not supported "
                                  f"(this program reads version {FORMAT_VERSION})")
        config = _checked_config(ckpt, source)
        classes = _checked_classes(ckpt, config, source)
        state = _checked_state(ckpt, source)
    else:
        state = ckpt.get("model", ckpt) if isinstance(ckpt.get("model"), Mapping) else ckpt
        state = _strip_module_prefix(state)
        if not _is_state_dict(state):
            raise CheckpointError(f"{source}: neither a FactSeg-QGIS checkpoint nor a (reference) state dict")
        config = infer_reference_config(state)
        classes = ISAID_CLASSES if config.num_classes == len(ISAID_CLASSES) else _generic_classes(config.num_classes)
        state = convert_reference_state_dict(state)
    try:
        model = FactSeg(config, classes)
    except ValueError as exc:  # e.g. an unknown backbone name
        raise CheckpointError(f"{source}: 'config' describes no buildable model: {exc}") from None
    _load_strict(model, state, source)
    try:  # the card travels on the model (save_checkpoint writes it back); derived when the file has none
        model.model_card = card_from_checkpoint(ckpt, classes, source) if ckpt.get("format") == FORMAT_NAME \
            else derived_card(classes)
    except ModelCardError as exc:
        raise CheckpointError(str(exc)) from None
    return model


_CONFIG_TYPES = {"backbone": str, "num_classes": int, "fpn_channels": int, "decoder_channels": int}


def _checked_config(ckpt: Mapping[str, Any], source: str) -> FactSegConfig:
    """The checkpoint's architecture, or a CheckpointError naming the missing, unknown or invalid field."""
    if "config" not in ckpt:
        raise CheckpointError(f"{source}: the checkpoint has no 'config' (backbone, num_classes, …), so the model "
                              "cannot be rebuilt")
    raw = ckpt["config"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: 'config' is a {type(raw).__name__}, expected a mapping of "
                              f"{', '.join(_CONFIG_TYPES)}")
    unknown = sorted(str(k) for k in raw if k not in _CONFIG_TYPES)
    if unknown:
        raise CheckpointError(f"{source}: 'config' has unknown fields {', '.join(unknown)} (known: "
                              f"{', '.join(_CONFIG_TYPES)})")
    for key, kind in _CONFIG_TYPES.items():
        if key in raw:
            value = raw[key]
            if type(value) is not kind or (kind is int and value <= 0):
                expected = "a positive whole number" if kind is int else "a string"
                raise CheckpointError(f"{source}: 'config' field {key} is {value!r}, expected {expected}")
    return FactSegConfig.from_dict(dict(raw))


def _checked_classes(ckpt: Mapping[str, Any], config: FactSegConfig, source: str) -> tuple[ClassInfo, ...]:
    """The class table, or a CheckpointError naming the malformed entry or the count that does not match."""
    items = ckpt.get("classes")
    if items is None:
        raise CheckpointError(f"{source}: the checkpoint has no 'classes' table (id, name, color per class)")
    try:
        table = check_class_table(items, f"{source}: 'classes'")
    except ClassTableError as exc:
        raise CheckpointError(str(exc)) from None
    if len(table) != config.num_classes:
        raise CheckpointError(f"{source}: 'classes' has {len(table)} entries but the model has "
                              f"{config.num_classes} output classes")
    return classes_from_dicts(table)


def _checked_state(ckpt: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The weights, or a CheckpointError when they are missing or hold something other than tensors."""
    state = ckpt.get("model")
    if state is None:
        raise CheckpointError(f"{source}: the checkpoint has no 'model' state dict (the weights)")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: 'model' is a {type(state).__name__}, expected a state dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: 'model' has a key {key!r} that is not a parameter name")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: 'model' entry {key} is a {type(value).__name__}, not a tensor")
    return dict(state)


def _generic_classes(n: int) -> tuple[ClassInfo, ...]:
    return tuple(ClassInfo(i, f"class_{i}", ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)) for i in range(n))


def _load_strict(model: FactSeg, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        raise CheckpointError(f"{source}: weights do not match the model ({'; '.join(parts)})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes do not match the model: {_short_list(wrong, 4)}")
    model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> FactSeg:
    """Load a FactSeg (our checkpoint or the released factseg50.pth) in eval mode on ``device``."""
    model = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return model.to(device).eval()


def checkpoint_dict(model: FactSeg, **extra: Any) -> dict[str, Any]:
    """The dict our checkpoints hold: weights, config and class table, plus any training state."""
    classes = model.classes or _generic_classes(model.config.num_classes)
    card = getattr(model, "model_card", None)
    if card is not None:  # the model's class table wins over a card's copy of it
        extra = {CARD_KEY: {**card, "classes": classes_to_dicts(classes)}, **extra}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": model.state_dict(),
        "config": model.config.to_dict(),
        "classes": classes_to_dicts(classes),
        **extra,
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file beside ``path`` and rename it, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: FactSeg, path: str | os.PathLike, **extra: Any) -> None:
    """Save ``model`` (and optional training state) atomically in our checkpoint format."""
    atomic_torch_save(checkpoint_dict(model, **extra), path)
