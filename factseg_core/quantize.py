"""int8 CPU inference: static quantization of the exported ONNX FactSeg, calibrated on real imagery, cached.

Why static QDQ with onnxruntime: on CPUs with VNNI, onnxruntime fuses DequantizeLinear→Conv→QuantizeLinear
into integer convolutions (u8 activations × s8 weights), which is where the exact float32 path spends its
time. Calibration needs images of the kind the model will see: windows cropped from the training data or
from the user's raster (the caller reads them; this module never touches GDAL). The head convolutions that
produce the logits, the ×4 upsampling and the CP fusion stay in float32, so the final argmax is not taken
over 8-bit logits.

The quantized file is cached next to the source model as ``<model>.int8-<format>-<sha256[:16]>.onnx``:
reused while the source file is unchanged, ignored (and replaced on the next calibration) when it changes.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import MEAN, ONNX_METADATA_KEY, STD

FORMATS = ("qdq", "qoperator")
#: Side of the calibration crops: activation ranges of a fully convolutional net do not depend on window size.
CALIBRATION_SIDE = 512
CALIBRATION_WINDOWS = 16


class CalibrationNeeded(ValueError):
    """int8 was asked for, but no quantized model matching the current source file is cached."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How the model is quantized (part of the cache key: a different choice is a different file)."""

    format: str = "qdq"
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"quantization format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    @property
    def tag(self) -> str:
        return f"{self.format}{'-pc' if self.per_channel else ''}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(model_path: str | Path, options: QuantizeOptions = QuantizeOptions(), sha256: str | None = None) -> Path:
    """Where the int8 model of ``model_path`` (current contents) is cached."""
    model_path = Path(model_path)
    sha256 = sha256 or file_sha256(model_path)
    return model_path.with_name(f"{model_path.name}.int8-{options.tag}-{sha256[:16]}.onnx")


def cached_int8(model_path: str | Path, options: QuantizeOptions = QuantizeOptions()) -> Path:
    """The cached int8 model of ``model_path``; :class:`CalibrationNeeded` when there is none for its contents."""
    path = cache_path(model_path, options)
    if not path.is_file():
        raise CalibrationNeeded(
            f"no int8 model calibrated for {Path(model_path).name} as it is now: run the worker once with "
            f"--calibrate IMAGE (a raster or training image like those you will segment)"
        )
    return path


def calibration_windows(images: Iterable[Any], count: int = CALIBRATION_WINDOWS,
                        side: int = CALIBRATION_SIDE, seed: int = 0) -> list[np.ndarray]:
    """``count`` normalised 1×3×side×side float32 crops spread over ``images``.

    An image is an H×W×3 uint8 array or a raster-like object with ``height``, ``width`` and
    ``read(y0, x0, y1, x1) -> (pixels, valid)`` (such as the worker's RasterSource: only the crops are read).
    Crops are seeded (the same images give the same calibration); images smaller than ``side`` are
    zero-padded after normalisation (what the engine does at raster edges), to a multiple of 32.
    """
    sources = list(images)
    if not sources:
        raise ValueError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    mean = np.asarray(MEAN, np.float32)
    std = np.asarray(STD, np.float32)
    windows = []
    for i in range(count):
        source = sources[i % len(sources)]
        height, width = _size(source)
        h, w = min(side, height), min(side, width)
        y0 = int(rng.integers(0, height - h + 1))
        x0 = int(rng.integers(0, width - w + 1))
        crop = (_read(source, y0, x0, y0 + h, x0 + w).astype(np.float32) - mean) / std
        window = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
        window[0, :, :h, :w] = crop.transpose(2, 0, 1)
        windows.append(window)
    return windows


def _size(source: Any) -> tuple[int, int]:
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"calibration images must be H×W×3 uint8, got {source.shape} {source.dtype}")
        return source.shape[0], source.shape[1]
    return int(source.height), int(source.width)


def _read(source: Any, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source[y0:y1, x0:x1]
    return np.asarray(source.read(y0, x0, y1, x1)[0], np.uint8)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared windows, in ranges (``CalibStridedMinMax``).

    Ranges of one window keep calibration memory at one window's activations (all tensors of FactSeg-R50
    at 512² are ~1 GiB; onnxruntime would otherwise hold them for every window at once).
    """

    def __init__(self, input_name: str, windows: list[np.ndarray]) -> None:
        self.windows, self.input_name = windows, input_name
        self.set_range(0, len(windows))

    def __len__(self) -> int:
        return len(self.windows)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter: Iterator[np.ndarray] = iter(self.windows[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        window = next(self._iter, None)
        return None if window is None else {self.input_name: window}


def float_tail(model) -> list[str]:
    """Names of the nodes kept in float32: the last convolution of each branch and everything after it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    keep, stack = set(), [o.name for o in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.add(node.name)
        if node.op_type != "Conv":  # stop at the head convolutions: they are kept, what feeds them is not
            stack.extend(node.input)
    return sorted(keep)


def float_nodes(model) -> list[str]:
    """Nodes left in float32: the :func:`float_tail` and every Resize (FPN/decoder upsampling).

    onnxruntime's uint8 Resize is slower than its float one: keeping them float measured 3.05× vs 2.97× the
    torch engine on one thread (3.22× vs 2.79× on two) for the demo model, with the same agreement.
    """
    return sorted(set(float_tail(model)) | {n.name for n in model.graph.node if n.op_type == "Resize"})


def quantize_onnx(source: str | Path, target: str | Path, windows: list[np.ndarray],
                  options: QuantizeOptions = QuantizeOptions(), extra_metadata: dict | None = None) -> Path:
    """Quantize the float ONNX ``source`` into ``target`` (atomically), calibrated on ``windows``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared), str(staged), _Reader(model.graph.input[0].name, windows),
            quant_format=QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator,
            per_channel=options.per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=float_nodes(model),
            extra_options={"CalibStridedMinMax": 1},
        )
        quantized = onnx.load(str(staged))
        _copy_metadata(onnx.load(str(source), load_external_data=False), quantized, extra_metadata or {})
        onnx.save(quantized, str(staged))
        staged.replace(target)
    return target


def _copy_metadata(source, target, extra: dict) -> None:
    """Keep the exporter's self-description (classes, mean/std…) and record how the file was quantized."""
    props = {p.key: p.value for p in source.metadata_props}
    if ONNX_METADATA_KEY in props:
        meta = json.loads(props[ONNX_METADATA_KEY])
        meta["quantization"] = extra
        props[ONNX_METADATA_KEY] = json.dumps(meta)
    del target.metadata_props[:]
    for key, value in props.items():
        target.metadata_props.add(key=key, value=value)


def calibrate(model_path: str | Path, images: Iterable[Any], options: QuantizeOptions = QuantizeOptions(),
              count: int = CALIBRATION_WINDOWS, side: int = CALIBRATION_SIDE, sources: list[str] | None = None) -> Path:
    """Quantize ``model_path`` (checkpoint or our ONNX export) on windows of ``images``; return the cached file.

    A checkpoint is exported to ONNX first (in a temporary folder). Older int8 files of the same model
    (other contents) are removed once the new one is in place; user files are never touched.
    """
    model_path = Path(model_path)
    sha256 = file_sha256(model_path)
    target = cache_path(model_path, options, sha256)
    windows = calibration_windows(images, count, side)
    info = {**asdict(options), "source": model_path.name, "source_sha256": sha256, "windows": len(windows),
            "window_side": side, "calibration_sources": list(sources or [])}
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        source = model_path
        if model_path.suffix.lower() != ".onnx":
            from .checkpoint import load_model
            from .onnx_export import export_onnx

            source = Path(tmp) / "float.onnx"
            export_onnx(load_model(model_path, "cpu"), source)
        quantize_onnx(source, target, windows, options, info)
    for stale in model_path.parent.glob(f"{model_path.name}.int8-{options.tag}-*.onnx"):
        if stale != target:
            stale.unlink()
    return target


__all__ = ["CalibrationNeeded", "QuantizeOptions", "cache_path", "cached_int8", "calibrate", "calibration_windows",
           "file_sha256", "float_nodes", "float_tail", "quantize_onnx"]
