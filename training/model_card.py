"""Print a model's card, or write a copy of the model with card fields set.

    python -m training.model_card MODEL                                  # the card as JSON
    python -m training.model_card factseg50.pth --set gsd_m=0.5 --output factseg50_05m.pt

MODEL is anything the worker serves: our checkpoints, the released ``factseg50.pth`` (no card: one derived from
its classes, ``gsd_m`` null), or an ONNX export (printing only). ``--set KEY=VALUE`` (repeatable) parses VALUE
as JSON where it can (``0.5``, ``null``, ``["red","green","blue"]``), else as text, and checks it for the field.
The copy is written in this project's checkpoint format (weights unchanged, strictly loadable), atomically; the
original is never modified, and ``--output`` may not name it.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factseg_core.card_reader import read_model_card
from factseg_core.checkpoint import CheckpointError, load_model, save_checkpoint
from factseg_core.model_card import FIELDS, ModelCardError, check_card, parse_value


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["gsd_m=0.5", ...]`` → ``{"gsd_m": 0.5}``, each value typed and checked for its field."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelCardError(f"--set takes KEY=VALUE, got {item!r}")
        if key not in FIELDS:
            raise ModelCardError(f"{key!r} is not a model card field (fields: {', '.join(FIELDS)})")
        values[key] = parse_value(key, text.strip())
    return values


def write_copy(source: str | Path, output: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Write ``source``'s weights with its card updated by ``values`` to ``output``; return the new card."""
    source, output = Path(source), Path(output)
    if output.exists() and output.resolve() == source.resolve():
        raise ModelCardError(f"--output {output} is the model itself: write the copy to a new file")
    if source.suffix.lower() == ".onnx":
        raise ModelCardError("--set writes checkpoints: set the card on the checkpoint, then export it again")
    model = load_model(source, "cpu")
    model.model_card = check_card({**model.model_card, **values})
    save_checkpoint(model, output)
    return dict(model.model_card)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad model, field or value."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint (.pt/.pth) or ONNX file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a card field in the copy (repeatable), e.g. gsd_m=0.5")
    parser.add_argument("--output", help="the copy to write (required with --set)")
    args = parser.parse_args(argv)
    if args.set and not args.output:
        parser.error("--set needs --output NEW.pt: the original model is never changed")
    if args.output and not args.set:
        parser.error("--output writes a copy with fields set: give at least one --set KEY=VALUE")
    try:
        if args.set:
            card = write_copy(args.model, args.output, parse_assignments(args.set))
            print(f"wrote {args.output} with " + ", ".join(f"{k}={json.dumps(card[k])}" for k in
                                                           parse_assignments(args.set)), file=sys.stderr)
        else:
            card = read_model_card(args.model)
    except (CheckpointError, ModelCardError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
