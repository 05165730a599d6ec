"""Errors of the training library: one sentence each; only ``main()`` functions turn them into exit codes."""
from __future__ import annotations


class TrainingError(Exception):
    """Training cannot go on (bad option, device, weights or numbers), with the reason in one sentence."""


class ConfigError(TrainingError, ValueError):
    """A configuration file (or override) that does not fit :class:`training.train_config.TrainConfig`."""


class TrainingCancelled(TrainingError):
    """``should_stop()`` asked the run to stop; ``latest.pt`` holds the state to ``--resume`` from."""


class DataError(ValueError):
    """A dataset that cannot be read as iSAID layout, with the reason and the offending path."""
