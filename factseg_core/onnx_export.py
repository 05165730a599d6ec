"""Export FactSeg to ONNX with CP fusion inside, dynamic batch/height/width, and self-describing metadata.

The graph maps a normalised N×3×H×W float32 input (H, W multiples of 32) to CP-fused probabilities
N×C×H×W, exactly what :class:`factseg_core.backends.OnnxRunner` feeds and expects. A JSON metadata entry
(key :data:`~factseg_core.config.ONNX_METADATA_KEY`) carries the class table, mean/std, patch, stride,
backbone and the model card (also on its own as key ``model_card``, JSON), so the worker can serve the file
without the checkpoint; the same values are also written as
plain keys (``class_names``, ``mean``…) for tools such as Netron.

Uses the TorchScript exporter (``dynamo=False``): the dynamo exporter needs onnxscript, not installed here.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classes import classes_to_dicts
from .config import MEAN, ONNX_METADATA_KEY, PATCH_SIZE, STD, STRIDE
from .model import FactSeg
from .model_card import CARD_KEY, check_card, derived_card

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"


class _Probabilities(torch.nn.Module):
    """Eval-mode FactSeg whose forward always returns CP-fused probabilities (never training logits).

    The fusion is written for onnxruntime: its Softmax over the channel axis of an N×C×H×W tensor
    transposes twice and took half of a FactSeg-R18 window's time here. The softmax normaliser cancels in
    CP fusion's renormalisation, so exp(fg − max) times the foreground factor, over its channel sum, is
    the same quantity (:func:`factseg_core.fusion.cp_fusion` up to float rounding) from elementwise ops
    and channel reductions.
    """

    def __init__(self, model: FactSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg, bi = self.model.logits(x)
        scores = torch.exp(fg - fg.amax(dim=1, keepdim=True))
        foreground = torch.sigmoid(bi)
        joint = torch.cat((scores[:, :1] * (1.0 - foreground), scores[:, 1:] * foreground), dim=1)
        return joint / joint.sum(dim=1, keepdim=True)


def export_metadata(model: FactSeg, patch: int = PATCH_SIZE, stride: int = STRIDE) -> dict[str, Any]:
    """The metadata dict embedded in exported files, the model card (:mod:`.model_card`) included."""
    if model.classes is None:
        raise ValueError("the model has no class table; cannot describe its classes in the ONNX metadata")
    card = getattr(model, "model_card", None) or derived_card(model.classes)
    card = check_card({**card, "classes": classes_to_dicts(model.classes), "patch": int(patch), "stride": int(stride)})
    return {
        "format": "factseg-qgis-onnx",
        "version": 1,
        "model": "FactSeg",
        "backbone": model.config.backbone,
        "config": model.config.to_dict(),
        "classes": classes_to_dicts(model.classes),
        "mean": list(MEAN),
        "std": list(STD),
        "input": "RGB, (x - mean) / std, N×3×H×W float32, H and W multiples of 32",
        "output": "CP-fused class probabilities N×C×H×W float32",
        "patch": int(patch),
        "stride": int(stride),
        CARD_KEY: card,
    }


def export_onnx(
    model: FactSeg,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    trace_size: int = 128,
) -> dict[str, Any]:
    """Write ``model`` to ``path`` (atomically), check it with ``onnx.checker``, return the metadata written."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be ≥ 17, got {opset}")
    if trace_size % 32:
        raise ValueError(f"trace_size must be a multiple of 32, got {trace_size}")
    metadata = export_metadata(model, patch, stride)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Probabilities(model).eval()
    example = torch.zeros(1, 3, trace_size, trace_size)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about Python values, harmless here
            torch.onnx.export(
                wrapper,
                (example,),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                do_constant_folding=True,
            )
        proto = onnx.load(str(raw))
        plain = {
            ONNX_METADATA_KEY: json.dumps(metadata),
            "class_names": json.dumps([c["name"] for c in metadata["classes"]]),
            "class_colors": json.dumps([c["color"] for c in metadata["classes"]]),
            "mean": json.dumps(metadata["mean"]),
            "std": json.dumps(metadata["std"]),
            "patch": str(patch),
            "stride": str(stride),
            "backbone": str(metadata["backbone"]),
            CARD_KEY: json.dumps(metadata[CARD_KEY]),
        }
        del proto.metadata_props[:]
        for key, value in plain.items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name = "factseg-qgis"
        proto.doc_string = "FactSeg (TGRS 2021) with collaborative-probability fusion; see metadata 'factseg'."
        onnx.checker.check_model(proto, full_check=True)
        staged = Path(tmp) / "final.onnx"
        onnx.save(proto, str(staged))
        staged.replace(path)
    return metadata


def compare_with_torch(model: FactSeg, path: str | Path, shapes=((1, 96, 160), (2, 64, 64)), seed: int = 0) -> float:
    """Largest absolute probability difference between onnxruntime and torch on random normalised inputs.

    The shapes differ from the traced one, so this also checks that batch, height and width are dynamic.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n, h, w in shapes:
        x = torch.randn(n, 3, h, w, generator=generator)
        with torch.inference_mode():
            expected = _Probabilities(model).eval()(x).numpy()
        (got,) = session.run(None, {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {got.shape} differs from torch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


__all__ = ["DEFAULT_OPSET", "compare_with_torch", "export_metadata", "export_onnx"]
