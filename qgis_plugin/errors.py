"""Errors the analyst can act on: their message is shown as is in the message bar, the log and Processing."""
from __future__ import annotations


class FactSegError(Exception):
    """A problem described in plain words (bad extent, unreachable worker, unreadable layer…)."""


class JobCancelled(FactSegError):
    """The user cancelled the job; nothing was written under the output name."""
