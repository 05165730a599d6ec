"""Window runners: the one small interface the sliding-window engine uses for torch and onnxruntime alike.

A runner maps a normalised N×3×h×w float32 batch (h, w multiples of 32) to CP-fused class probabilities
N×C×h×w float32 on the CPU. Every runner also says what it runs (``name``, ``device``, ``num_classes``,
``classes``, ``model_info``) so the worker can describe it to the plugin.

:class:`TorchRunner` additionally offers :meth:`TorchRunner.forward_device` (probabilities left on the
device). The engine uses it to keep the accumulators on the GPU, so that only uint8 pixels go up and uint8
class ids come back: the 64 bytes/pixel of probabilities never cross PCIe nor touch host memory bandwidth.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .classes import ClassInfo, classes_from_dicts, classes_to_dicts
from .config import MEAN, ONNX_METADATA_KEY, PATCH_SIZE, STD, STRIDE
from .engine import WindowRunner
from .model_card import ModelCardError, card_from_checkpoint, derived_card

AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_LOG = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``; explicit ``cuda`` without one is an error."""
    name = str(device).split(":")[0].lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available to this torch build")
    return name


def _check_batch(batch: torch.Tensor) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a N×3×h×w batch, got shape {tuple(batch.shape)}")
    if batch.shape[2] % 32 or batch.shape[3] % 32:
        raise ValueError(f"window height and width must be multiples of 32, got {tuple(batch.shape[2:])}")


class TorchRunner:
    """A torch module (FactSeg in eval mode, or anything returning probabilities) on CPU or CUDA.

    ``amp`` runs the network under autocast: "bf16" or "fp16" on CUDA, "bf16" on CPUs with native bfloat16
    (AVX512-BF16/AMX, about 2.3× faster than float32 on the EPYC dev machines, class maps agreeing to ~99.9%;
    approximate, so opt-in). CP fusion is computed in float32 whatever the autocast dtype (see :func:`factseg_core.fusion.cp_fusion`), so probabilities still sum to 1.
    ``channels_last`` defaults to on: it is faster on CUDA tensor cores and for oneDNN convolutions on CPU.
    The module is converted (device, memory format) on a copy unless ``copy_model=False``; it is put in
    eval mode either way. ``max_batch``: see :func:`_max_batch`.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        amp: str | None = None,
        channels_last: bool | None = None,
        copy_model: bool = True,
        max_batch: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.max_batch = _max_batch(max_batch, self.device)
        self.torch_device = torch.device(self.device)
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if amp == "fp16" and self.device != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; on CPU use amp='bf16' (fast only with AVX512-BF16/AMX)")
        if amp == "bf16" and self.device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("amp='bf16' requested but this GPU has no bfloat16 support; use 'fp16'")
        self.amp = amp
        self.precision = amp or "fp32"
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True  # windows share one shape: let cuDNN pick its fastest kernels
        self.channels_last = True if channels_last is None else bool(channels_last)
        on_target = all(p.device.type == self.device for p in model.parameters())
        if self.channels_last or not on_target:  # convert a copy unless told the module is ours to change
            model = (copy.deepcopy(model) if copy_model else model).to(self.torch_device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
        model.eval()
        self.model = model
        config = getattr(model, "config", None)
        self.classes: tuple[ClassInfo, ...] | None = getattr(model, "classes", None)
        self.num_classes = int(config.num_classes) if config is not None else self._probe_classes()
        card = getattr(model, "model_card", None)
        if card is None and self.classes is not None:
            card = derived_card(self.classes)
        self.model_card: dict[str, Any] | None = card
        self.model_info: dict[str, Any] = {
            "model": type(model).__name__,
            "backbone": getattr(config, "backbone", None),
            "patch": int(card["patch"]) if card else PATCH_SIZE,
            "stride": int(card["stride"]) if card else STRIDE,
        }

    def _probe_classes(self) -> int:
        return int(self.forward_device(torch.zeros(1, 3, 32, 32, device=self.torch_device)).shape[1])

    @torch.inference_mode()
    def forward_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities (N×C×h×w float32) of a normalised batch already on :attr:`torch_device`, left there.

        On CUDA this only queues kernels: it returns before the GPU is done, which is what lets the engine
        prepare the next batch on the host meanwhile. Out of GPU memory, the batch is halved and retried
        (see :func:`run_with_backoff`).
        """
        _check_batch(batch)
        return run_with_backoff(self, batch, self._forward_once)

    def _forward_once(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.amp is not None:
            with torch.autocast(self.device, dtype=AMP_DTYPES[self.amp]):
                probs = self.model(batch)
        else:
            probs = self.model(batch)
        return probs.float().contiguous()

    def _from_host(self, part: torch.Tensor) -> torch.Tensor:
        if self.device == "cuda":
            host = part.float().contiguous().pin_memory()
            return self._forward_once(host.to(self.torch_device, non_blocking=True)).cpu()
        return self._forward_once(part.float())

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch)
        return run_with_backoff(self, batch, self._from_host)


def _max_batch(max_batch: int | None, device: str) -> int | None:
    """Most windows per network call: by default 1 on CPU, unlimited (the engine's batch size) on CUDA.

    On CPU oneDNN and onnxruntime already spread one 896² window over all cores; a batch of 4 gained
    nothing measurable here but needs ~1 GiB more activation memory (FactSeg-R50: +0.45 GiB at 1 window,
    +1.3 GiB at 4). On a GPU batching fills the device.
    """
    if max_batch is None:
        return 1 if device == "cpu" else None
    if max_batch < 1:
        raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
    return int(max_batch)


def _split(batch: torch.Tensor, max_batch: int | None) -> list[torch.Tensor]:
    if max_batch is None or batch.shape[0] <= max_batch:
        return [batch]
    return list(torch.split(batch, max_batch))


class OutOfDeviceMemory(MemoryError):
    """Even one window does not fit in the device's memory: the request fails, the worker keeps serving."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failure, from torch (``torch.OutOfMemoryError``) or onnxruntime's CUDA provider."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "Failed to allocate memory" in text)


def run_with_backoff(runner: Any, batch: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``forward`` over ``batch`` in parts of ``runner.max_batch``; out of memory, halve it and retry.

    The batch size that worked stays in ``runner.max_batch`` (the worker reports it in ``info``), so later
    requests start from it instead of failing again. Only when a single window does not fit does the call
    fail, with :class:`OutOfDeviceMemory`.
    """
    while True:
        try:
            outputs = [forward(part) for part in _split(batch, runner.max_batch)]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            del exc  # drop the traceback's references to the failed step's tensors before freeing
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            current = min(runner.max_batch or batch.shape[0], batch.shape[0])
            if current <= 1:
                where = "GPU" if runner.device == "cuda" else runner.device.upper()
                raise OutOfDeviceMemory(
                    f"the {where} ran out of memory for a single {batch.shape[2]}×{batch.shape[3]} window; "
                    f"use a smaller patch size, free device memory or run on the CPU"
                ) from None
            runner.max_batch = current // 2
            _LOG.warning("out of %s memory at %d windows per call: retrying with %d", runner.device, current,
                         runner.max_batch)


def _ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                "device 'cuda' requested for ONNX but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The FactSeg metadata dict embedded by our exporter (empty for foreign ONNX files)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return json.loads(prop.value)
    return {}


def onnx_card(metadata: dict[str, Any], classes: tuple[ClassInfo, ...], path: Path) -> dict[str, Any]:
    """The card an export carries in its metadata, or one derived from the export's classes and windows."""
    if metadata.get("model_card") is None:
        return derived_card(classes, int(metadata.get("patch", PATCH_SIZE)), int(metadata.get("stride", STRIDE)))
    try:
        return card_from_checkpoint(metadata, classes, str(path))
    except ModelCardError as exc:
        raise ValueError(str(exc)) from None


class OnnxRunner:
    """An exported FactSeg (CP fusion included) run by onnxruntime.

    ``device="auto"`` picks the CUDA provider only when onnxruntime-gpu offers it; ``threads`` sets the
    intra-op thread count (default: all cores), ``max_batch`` as for :class:`TorchRunner`. The embedded metadata (classes, mean/std, patch, stride,
    backbone) is read into :attr:`metadata`; a file without it is refused, since its classes are unknown.
    """

    name = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 max_batch: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        elif device not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        self.device = device
        self.torch_device = torch.device("cpu")  # onnxruntime takes and returns host arrays
        self.max_batch = _max_batch(max_batch, device)
        try:
            self.metadata = read_onnx_metadata(path)
        except Exception as exc:
            raise ValueError(f"cannot read ONNX model {path}: {exc}") from None
        if not self.metadata:
            raise ValueError(f"{path} has no '{ONNX_METADATA_KEY}' metadata: export it with training/export_onnx.py")
        self._check_normalisation(path)
        self.classes = classes_from_dicts(self.metadata["classes"])
        self.model_card = onnx_card(self.metadata, self.classes, path)
        self.precision = "int8" if self.metadata.get("quantization") else "fp32"
        self.num_classes = len(self.classes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=_ort_providers(device))
        self.input_name = self.session.get_inputs()[0].name
        self.model_info = {
            "model": self.metadata.get("model", "FactSeg"),
            "backbone": self.metadata.get("backbone"),
            "patch": int(self.metadata.get("patch", PATCH_SIZE)),
            "stride": int(self.metadata.get("stride", STRIDE)),
        }

    def _check_normalisation(self, path: Path) -> None:
        """The engine normalises with MEAN/STD; a model exported for other statistics would be fed wrongly."""
        for key, expected in (("mean", MEAN), ("std", STD)):
            got = self.metadata.get(key)
            if got is not None and not np.allclose(got, expected):
                raise ValueError(f"{path}: model expects {key} {got}, this engine normalises with {list(expected)}")

    def forward_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The same as calling the runner: its device for the engine is the host."""
        return self(batch)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _check_batch(batch)
        return run_with_backoff(self, batch, self._run_once)

    def _run_once(self, part: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(part.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


def build_runner(model_path: str | Path, backend: str = "torch", device: str = "auto", **options: Any) -> WindowRunner:
    """A float runner for a weight file: ``torch`` loads our checkpoint or the released factseg50.pth, ``onnx`` an
    export. ``options`` go to the runner (torch: amp, channels_last, max_batch; onnx: threads, max_batch).
    Precision choices (int8, auto) are :func:`factseg_core.runners.make_runner`'s, which calls this."""
    if backend == "torch":
        from .checkpoint import load_model

        runner = TorchRunner(load_model(model_path, "cpu"), device=device, copy_model=False, **options)
        if runner.classes is None:
            raise ValueError(f"{model_path}: model has no class table")
        return runner
    if backend == "onnx":
        return OnnxRunner(model_path, device=device, **options)
    raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")


def runner_info(runner: WindowRunner) -> dict[str, Any]:
    """JSON-able description of a runner (backend, device, classes, model) for the worker's ``info`` reply."""
    classes = getattr(runner, "classes", None)
    return {
        "backend": runner.name,
        "device": runner.device,
        "num_classes": runner.num_classes,
        "classes": classes_to_dicts(classes) if classes else None,
        "precision": getattr(runner, "precision", "fp32"),
        "max_batch": getattr(runner, "max_batch", None),
        **getattr(runner, "model_info", {}),
    }


__all__ = ["OnnxRunner", "OutOfDeviceMemory", "TorchRunner", "WindowRunner", "build_runner", "read_onnx_metadata", "resolve_device", "run_with_backoff",
           "runner_info", "is_out_of_memory"]
