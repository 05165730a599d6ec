"""Precision choices that hold on the machine at hand: measure, then choose; never slower than exact fp32.

bf16 is 2.3–2.6× faster than float32 on some CPUs (AMD EPYC with AVX512-BF16) and *slower* on others
(an Intel Xeon with AVX512-BF16 but no AMX use by oneDNN: 0.65×); int8 depends on VNNI and on the
quantized model; on a GPU fp16/bf16 usually win. So the worker does not guess: :func:`probe` times each
available precision on the same windows and measures its class agreement with exact fp32, and
:func:`choose_precision` picks the fastest one that agrees well enough and is faster than fp32 by a margin;
otherwise fp32. ``auto`` caches its probe next to the model (keyed by the model's hash and the machine),
so a worker start costs the probe once.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import OnnxRunner, build_runner, resolve_device
from .quantize import CalibrationNeeded, QuantizeOptions, cached_int8, calibration_windows, file_sha256

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "auto")
#: Smallest class agreement with fp32 for a precision to be chosen automatically.
MIN_AGREEMENT = 0.995
#: A precision must be at least this much faster than fp32 to replace it (timing noise is a few %).
MIN_SPEEDUP = 1.10
PROBE_SIDE = 512
PROBE_WINDOWS = 2


@dataclass(frozen=True)
class Measurement:
    """One precision on this machine: seconds per probe window, class agreement with fp32 (1.0 for fp32)."""

    precision: str
    seconds: float | None
    agreement: float | None
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.seconds is not None


def choose_precision(measurements: Iterable[Measurement], min_agreement: float = MIN_AGREEMENT,
                     min_speedup: float = MIN_SPEEDUP) -> str:
    """The fastest precision at least ``min_speedup``× faster than fp32 with ≥ ``min_agreement``; else fp32."""
    by_name = {m.precision: m for m in measurements}
    exact = by_name.get("fp32")
    if exact is None or not exact.usable:
        raise ValueError("choosing a precision needs a measured fp32 run")
    best, best_seconds = "fp32", exact.seconds
    for m in by_name.values():
        if m.precision == "fp32" or not m.usable or m.agreement is None or m.agreement < min_agreement:
            continue
        if m.seconds * min_speedup <= exact.seconds and m.seconds < best_seconds:
            best, best_seconds = m.precision, m.seconds
    return best


def candidates(device: str) -> list[str]:
    """Precisions worth measuring on ``device`` (int8 is a CPU path; fp16 needs CUDA)."""
    return ["fp32", "bf16", "fp16"] if device == "cuda" else ["fp32", "bf16", "int8"]


def precision_runner(model_path: str | Path, precision: str, backend: str = "torch", device: str = "auto",
                     images: Iterable[Any] | None = None, **options: Any):
    """A runner for ``model_path`` at ``precision``; ``auto`` probes (or reuses the cached probe) first.

    int8 runs the cached quantized ONNX of the model on the CPU (:class:`~factseg_core.quantize.CalibrationNeeded`
    when the model has not been calibrated); bf16/fp16 run the torch backend under autocast.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = auto_precision(model_path, backend, device, images)["choice"]
    if precision == "int8":
        if resolve_device(device) == "cuda" and str(device) != "auto":
            raise ValueError("precision int8 is a CPU path; on a GPU use fp16 or bf16")
        return OnnxRunner(cached_int8(model_path), device="cpu", **_onnx_options(options))
    if precision in ("bf16", "fp16"):
        if backend != "torch" or str(model_path).lower().endswith(".onnx"):
            raise ValueError(f"precision {precision} needs the torch backend and a checkpoint, not an ONNX file")
        return build_runner(model_path, backend="torch", device=device, amp=precision, **options)
    return build_runner(model_path, backend=backend, device=device, **options)


def _onnx_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in ("threads", "max_batch")}


def probe_windows(images: Iterable[Any] | None = None, count: int = PROBE_WINDOWS, side: int = PROBE_SIDE) -> list[np.ndarray]:
    """Windows to probe on: crops of the user's imagery when given, else a seeded synthetic texture."""
    if images is None:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        images = [np.kron(base, np.ones((8, 8, 1), np.uint8))]  # blocky texture: not pure noise
    return calibration_windows(images, count, side, seed=1)


def measure(runner: Any, windows: list[np.ndarray], reference: list[np.ndarray] | None = None) -> tuple[float, list[np.ndarray]]:
    """Median seconds per window (after one warm-up) and the class maps, for agreement with ``reference``."""
    runner(torch.from_numpy(windows[0]))
    times, classes = [], []
    for window in windows:
        t0 = time.perf_counter()
        probs = runner(torch.from_numpy(window))
        times.append(time.perf_counter() - t0)
        classes.append(probs.argmax(1).numpy())
    return float(np.median(times)), classes


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / sum(x.size for x in a)


def probe(model_path: str | Path, backend: str = "torch", device: str = "auto", images: Iterable[Any] | None = None,
          precisions: list[str] | None = None, make: Callable[..., Any] | None = None,
          side: int = PROBE_SIDE) -> list[Measurement]:
    """Time every candidate precision on the same windows and compare its classes with fp32's.

    ``make(precision)`` builds the runner (default: :func:`precision_runner` for ``model_path``).
    """
    device = resolve_device(device)
    make = make or (lambda p: precision_runner(model_path, p, backend=backend, device=device))
    windows = probe_windows(images, side=side)
    results, exact = [], None
    for name in precisions or candidates(device):
        try:
            seconds, classes = measure(make(name), windows)
        except (ValueError, RuntimeError) as exc:  # not available here (no bf16, not calibrated, …)
            results.append(Measurement(name, None, None, str(exc).split("\n")[0]))
            continue
        exact = classes if name == "fp32" else exact
        results.append(Measurement(name, seconds, agreement(classes, exact) if exact is not None else None))
    return results


def machine_key() -> str:
    """What the measurements depend on besides the model: CPU model, core count, library versions."""
    import os

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-cuda"
    return f"{cpu}|{os.cpu_count()}|{gpu}|torch {torch.__version__}|ort {onnxruntime.__version__}"


def auto_precision(model_path: str | Path, backend: str = "torch", device: str = "auto",
                   images: Iterable[Any] | None = None, side: int = PROBE_SIDE) -> dict[str, Any]:
    """Probe once per model contents, machine and int8 calibration; cached in ``<model>.precision.json``."""
    model_path = Path(model_path)
    try:
        int8_tag = cached_int8(model_path, QuantizeOptions()).name
    except CalibrationNeeded:
        int8_tag = None
    key = {"model_sha256": file_sha256(model_path), "machine": machine_key(), "device": str(device),
           "backend": backend, "int8": int8_tag, "side": side}
    cache = model_path.with_name(model_path.name + ".precision.json")
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return stored
        except (OSError, ValueError):
            pass
    measurements = probe(model_path, backend, device, images, side=side)
    result = {"key": key, "choice": choose_precision(measurements),
              "measurements": [asdict(m) for m in measurements]}
    try:
        cache.write_text(json.dumps(result, indent=2))
    except OSError:
        pass  # a read-only model folder: probe again next time
    return result


def format_probe(measurements: list[Measurement], choice: str) -> str:
    """A short table for ``python -m worker --probe``."""
    exact = next((m.seconds for m in measurements if m.precision == "fp32" and m.usable), None)
    lines = [f"{'precision':<9} {'s/window':>9} {'× fp32':>7} {'agreement':>10}"]
    for m in measurements:
        if not m.usable:
            lines.append(f"{m.precision:<9} {'-':>9} {'-':>7} {'-':>10}  not available: {m.note}")
            continue
        speed = f"{exact / m.seconds:7.2f}" if exact else "      -"
        agree = f"{100 * m.agreement:9.2f}%" if m.agreement is not None else "         -"
        lines.append(f"{m.precision:<9} {m.seconds:9.3f} {speed} {agree}")
    lines.append(f"auto → {choice} (fastest with ≥ {100 * MIN_AGREEMENT:.1f}% agreement and ≥ {MIN_SPEEDUP:.2f}× fp32; "
                 f"else fp32)")
    return "\n".join(lines)


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".vrt", ".img", ".jp2")
#: At most this many files of a calibration folder are opened (the windows are spread over them).
MAX_CALIBRATION_FILES = 64


def calibration_sources(paths: Iterable[str | Path], open_image: Callable[[str], Any]) -> list[Any]:
    """Open the calibration images: files as given, folders as their image files (sorted, at most 64)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_CALIBRATION_FILES]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"calibration image not found: {path}")
    if not files:
        raise ValueError("no calibration images found in " + ", ".join(map(str, paths)))
    return [open_image(str(f)) for f in files[:MAX_CALIBRATION_FILES]]


def prepare_worker_model(model: str, backend: str, device: str, precision: str = "fp32", amp: str | None = None,
                         calibrate_paths: list[str] | None = None, open_image: Callable[[str], Any] | None = None,
                         log: Callable[[str], None] = print) -> tuple[str, str, str | None]:
    """What the worker loads for ``--precision``/``--calibrate``: (model file, backend, amp).

    ``--calibrate`` quantizes and caches first (int8 then reuses the cache on later starts); ``auto`` probes
    once and caches its choice; ``--amp`` is the older spelling of ``--precision bf16|fp16``.
    """
    from .quantize import calibrate

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if amp and precision not in ("fp32", amp):
        raise ValueError(f"--amp {amp} contradicts --precision {precision}")
    precision = amp if amp and precision == "fp32" else precision
    images = calibration_sources(calibrate_paths, open_image) if calibrate_paths else None
    if images is not None:
        t0 = time.perf_counter()
        path = calibrate(model, images, sources=[str(p) for p in calibrate_paths or []])
        log(f"calibrated int8 model in {time.perf_counter() - t0:.0f} s: {path}")
    if precision == "auto":
        result = auto_precision(model, backend, device, images)
        log(format_probe([Measurement(**m) for m in result["measurements"]], result["choice"]))
        precision = result["choice"]
    if precision == "int8":
        return str(cached_int8(model)), "onnx", None
    if precision in ("bf16", "fp16"):
        return model, "torch", precision
    return model, backend, None


def probe_report(model: str, backend: str, device: str, calibrate_paths: list[str] | None = None,
                 open_image: Callable[[str], Any] | None = None) -> str:
    """``python -m worker --probe``: every precision timed and compared with fp32 here, and auto's choice.

    With ``--calibrate`` the int8 model is (re)calibrated first, on the same images the probe then crops.
    """
    from .quantize import calibrate

    images = calibration_sources(calibrate_paths, open_image) if calibrate_paths else None
    if images is not None:
        calibrate(model, images, sources=[str(p) for p in calibrate_paths or []])
    measurements = probe(model, backend, device, images)
    source = "the calibration images" if images else "a synthetic texture (pass --calibrate IMAGE for your imagery)"
    return f"probe on {PROBE_WINDOWS} windows of {PROBE_SIDE}² from {source}:\n" + format_probe(
        measurements, choose_precision(measurements))


__all__ = ["MIN_AGREEMENT", "MIN_SPEEDUP", "PRECISIONS", "Measurement", "auto_precision", "candidates",
           "calibration_sources", "choose_precision", "format_probe", "measure", "precision_runner",
           "prepare_worker_model", "probe", "probe_report", "probe_windows"]
