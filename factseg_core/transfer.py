"""Initialising a FactSeg from another one's weights, for fine-tuning on a new class table.

Every tensor whose name and shape match is copied; everything else keeps the target's fresh initialisation.
When the class tables differ (other names, order or count) the two output heads are re-initialised even
where their shapes happen to match: ``fg_head`` scores the classes of the table, and ``bi_head`` scores
"any object of the table" (the foreground), so both mean something else under another table. The encoder,
the FPNs and the decoders carry over: they are what the released or a previous model teaches the new one.

The source is anything :func:`factseg_core.checkpoint.read_checkpoint` reads and
:func:`factseg_core.checkpoint.model_from_checkpoint` understands: our checkpoints and the released
SimpleCV-layout ``factseg50.pth`` (its names are converted to ours first).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from .classes import ClassInfo
from .model import FactSeg, FactSegConfig

#: Parameter-name prefixes of the heads whose meaning depends on the class table.
CLASS_HEAD_PREFIXES: tuple[str, ...] = ("fg_head.", "bi_head.")


@dataclass(frozen=True)
class SourceWeights:
    """A source model's weights under our parameter names, and its class table."""

    state: dict[str, torch.Tensor]
    config: FactSegConfig
    classes: tuple[ClassInfo, ...] | None
    source: str


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_weights` did, tensor by tensor name."""

    kept: tuple[str, ...]
    new: tuple[str, ...]
    heads_reinitialised: bool
    unused: tuple[str, ...]

    def summary(self) -> str:
        """One line for a training log: counts, and the names that were not carried over."""
        new = ", ".join(self.new[:8]) + (f" … and {len(self.new) - 8} more" if len(self.new) > 8 else "")
        why = " (another class table: heads re-initialised)" if self.heads_reinitialised else ""
        return (f"kept {len(self.kept)} tensors, new {len(self.new)}{why}: {new or 'none'}; "
                f"{len(self.unused)} source tensors unused")


def read_source_weights(path: str | os.PathLike) -> SourceWeights:
    """Read a checkpoint (ours or the released reference layout) into our parameter names."""
    model = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return SourceWeights(model.state_dict(), model.config, model.classes, str(path))


def same_class_table(a: Sequence[ClassInfo] | None, b: Sequence[ClassInfo] | None) -> bool:
    """True when both tables name the same classes in the same order (colours are display only)."""
    if a is None or b is None:
        return a is None and b is None
    return [c.name for c in a] == [c.name for c in b]


def _is_head(name: str) -> bool:
    return name.startswith(CLASS_HEAD_PREFIXES)


def transfer_weights(target: FactSeg, source: SourceWeights) -> TransferReport:
    """Copy ``source``'s matching tensors into ``target`` in place (see the module docstring for the rule).

    Raises :class:`CheckpointError` when not a single tensor matches (another backbone, say): a fine-tuning
    run that silently started from scratch would waste the user's time.
    """
    reinit_heads = not same_class_table(target.classes, source.classes)
    own = target.state_dict()
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if reinit_heads and _is_head(name):
            continue
        other = source.state.get(name)
        if other is not None and tuple(other.shape) == tuple(tensor.shape):
            matched[name] = other
    if not matched:
        raise CheckpointError(f"{source.source}: no weight matches this {target.config.backbone} FactSeg by name "
                              f"and shape, so it cannot initialise it")
    target.load_state_dict({**own, **matched}, strict=True)
    return TransferReport(
        kept=tuple(n for n in own if n in matched),
        new=tuple(n for n in own if n not in matched),
        heads_reinitialised=reinit_heads,
        unused=tuple(n for n in source.state if n not in matched),
    )


__all__ = [
    "CLASS_HEAD_PREFIXES",
    "SourceWeights",
    "TransferReport",
    "read_source_weights",
    "same_class_table",
    "transfer_weights",
]
