"""Refuse outputs that would destroy or shadow a user's file, before any pixel is computed.

The rule is worker.io.outputs.check_output_paths (the CLI's too): an output that is, or resolves to, an input
file, an existing directory, or a place that cannot be written. Until a worker version carries that module, the
two checks the plugin always made stand in (output = input, output = directory).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import FactSegError
from .worker_import import outputs_module


def check_outputs(outputs: Sequence[str | Path | None], inputs: Sequence[str | Path]) -> None:
    """FactSegError (one sentence) if any output may not be written; None entries are skipped."""
    module = outputs_module()
    if module is not None:
        try:
            module.check_output_paths(list(outputs), list(inputs))
        except module.OutputPathError as exc:
            raise FactSegError(str(exc)) from exc
        return
    wanted = [Path(o) for o in outputs if o]
    for output in wanted:
        if output.is_dir():
            raise FactSegError(f"The output {output} is an existing directory: give a file name.")
        for source in inputs:
            if Path(source).is_file() and Path(source).resolve() == output.resolve():
                raise FactSegError(f"The output {output} is the input layer's own file: choose another output name.")
    if len({o.resolve() for o in wanted}) < len(wanted):
        raise FactSegError("Two outputs have the same file name: give each output its own name.")
