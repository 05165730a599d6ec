"""Export a FactSeg checkpoint to ONNX for the worker's onnxruntime backend.

    .venv/bin/python training/export_onnx.py --model CKPT --output FILE.onnx [--opset 17]
        [--patch 896 --stride 512] [--no-verify]

CKPT is anything ``factseg_core.load_model`` reads (our checkpoints, the released factseg50.pth). The file
holds CP fusion, dynamic batch/height/width and the class table, mean/std, patch, stride, backbone and the
model card (key ``model_card``, JSON) as metadata; it is checked with ``onnx.checker`` and (unless ``--no-verify``) compared with torch on random
inputs of other shapes than the traced one: the export fails if probabilities differ by more than 1e-4.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from factseg_core.checkpoint import CheckpointError, load_model
from factseg_core.config import PATCH_SIZE, STRIDE
from factseg_core.onnx_export import DEFAULT_OPSET, compare_with_torch, export_onnx

TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint to export (ours or the released factseg50.pth)")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, ≥ 17 (default {DEFAULT_OPSET})")
    parser.add_argument("--patch", type=int, help="window size recorded in the metadata (default: the model "
                        f"card's, else {PATCH_SIZE})")
    parser.add_argument("--stride", type=int, help=f"window stride recorded in the metadata (default: the model "
                        f"card's, else {STRIDE})")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch comparison")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model, "cpu")
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    card = getattr(model, "model_card", None) or {}
    args.patch = args.patch or int(card.get("patch", PATCH_SIZE))
    args.stride = args.stride or int(card.get("stride", STRIDE))
    if not 0 < args.stride <= args.patch:
        parser.error(f"need 0 < stride ≤ patch, got patch={args.patch} stride={args.stride}")
    try:
        meta = export_onnx(model, args.output, opset=args.opset, patch=args.patch, stride=args.stride)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: FactSeg-{meta['backbone']}, {len(meta['classes'])} classes, opset {args.opset}, "
          f"patch {meta['patch']} stride {meta['stride']}; onnx.checker passed")
    if not args.no_verify:
        diff = compare_with_torch(model, args.output)
        print(f"onnxruntime vs torch: max |Δp| = {diff:.2e} (tolerance {TOLERANCE:.0e})")
        if diff > TOLERANCE:
            print("error: the exported model does not reproduce torch; do not use it", file=sys.stderr)
            Path(args.output).unlink(missing_ok=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
