"""Refuse outputs that would destroy or shadow a user's file, before any pixel is computed: the CLI's rule
(worker.io.outputs.check_output_paths) — an output that is, or resolves to, an input file, an existing directory,
or a place that cannot be written — as one sentence for the message bar and Processing."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import FactSegError
from .worker_import import OutputPathError, check_output_paths


def check_outputs(outputs: Sequence[str | Path | None], inputs: Sequence[str | Path]) -> None:
    """FactSegError (one sentence, capitalised) if any output may not be written; None/'' entries are skipped."""
    try:
        check_output_paths([o for o in outputs if o], [i for i in inputs if i])
    except OutputPathError as exc:
        text = str(exc)
        raise FactSegError(f"{text[:1].upper()}{text[1:]}{'' if text.endswith('.') else '.'}") from exc
