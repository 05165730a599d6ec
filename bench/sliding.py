"""Side-by-side benchmark of sliding-window inference: the reference approach vs this engine (torch, ONNX).

    .venv/bin/python bench/sliding.py                       # 2k, 4k, 8k squares; all paths; fast mode; memory
    .venv/bin/python bench/sliding.py --quick               # 2k only, fewer extras (a few minutes on 2 cores)
    .venv/bin/python bench/sliding.py --sizes 2048,4096 --paths reference,torch --model factseg50.pth

Paths, each measured in a fresh subprocess so its peak RSS is its own:
  (a) reference  a faithful re-implementation of the reference evaluation: the whole image in memory,
                 full-image float32 probability and count accumulators (C×H×W + H×W), windows one at a time
                 (batch 1), plain eager NCHW model.
  (b) torch      this engine (factseg_core.sweep.stream_predict) on a TorchRunner: rows read from the
                 raster file in bands, batched windows, channels_last, accumulators of open rows only.
  (c) onnx       the same engine on onnxruntime (OnnxRunner, the exported FactSeg with CP fusion).
  (d) torch-bf16 the engine on torch under bfloat16 autocast (opt-in ``--precision bf16`` of the worker: fast on
                 CPUs with AVX512-BF16/AMX and on GPUs, approximate — its class agreement is printed).
  (e) onnx-int8  the engine on the statically quantized (QDQ, per-channel, u8/s8) ONNX model of
                 factseg_core.quantize (``--precision int8``), calibrated on ``--calibrate`` images.
All use the same FactSeg weights (``--model``, default: FactSeg-R50 with seeded random weights, since no
trained weights ship with the repository; speed and memory do not depend on weight values) and the same
RGB raster (a raw file on disk): ``--image`` tiled (mirrored) to the size, by default the demo scene when
``--model`` is given and it exists, else a synthetic texture. Figures: megapixels of output per second, peak
RSS, ratio to (a) and to (b), and ``agreement``: the fraction of pixels whose class equals (b)'s, the exact
engine (with random weights agreement says little: measure a trained model with ``--model``).

Compute bound: the machine's measured convolution throughput (GFLOP/s of a large 3×3 conv, measured by each
child just before its run, so that other load on the machine affects bound and run alike) divided by the
model's FLOPs per output megapixel under the window grid; "% bound" says how close each path gets. "load" is
the 1-minute load average when the child finished: figures taken on a busy machine are not comparable.
Fast mode: the engine with a larger stride (fewer windows), with its class agreement to the exact protocol.
Memory at 20,000²: the streaming engine's peak RSS on a 20,000 × 20,000 raster, measured with a cheap
stand-in runner (a 1×1 convolution + softmax with the model's 16 classes, so the run takes minutes instead of
~an hour of FactSeg-R50 here), and on a 20,000-wide strip of three window rows (same peak: independent of
height). With ``--memory-model real`` (default outside --quick) the real model's own share (weights plus one
window's activations, which do not depend on the raster) is measured as the difference between the real and
the cheap runner on a 2048 × patch strip, and added to give the 20,000² figure with the real model.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from factseg_core.config import MEAN, STD  # noqa: E402
from factseg_core.windows import window_grid  # noqa: E402

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
ENGINE_PATHS = ("torch", "onnx", "torch-bf16", "torch-fp16", "onnx-int8")
DEMO_SCENE = REPO / "demo_data" / "synthetic" / "scene" / "scene.tif"
DEMO_TRAIN = REPO / "demo_data" / "synthetic" / "train" / "images"


# ------------------------------------------------------------------------------------------ helpers
def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (VmHWM: per address space, so not inherited across fork/exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synthetic_rows(y0: int, y1: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic RGB rows: smooth gradients plus a repeating block texture (cheap to generate)."""
    y = np.arange(y0, y1, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    r = (x * 7 + y * 3 + seed) % 256
    g = ((x // 16) * 37 + (y // 16) * 91) % 256
    b = (x * y // 97 + 11 * seed) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def read_image(path: str) -> np.ndarray:
    """H×W×3 uint8 of an image or raster (GDAL; first three bands, grey repeated)."""
    from osgeo import gdal

    gdal.UseExceptions()
    ds = gdal.Open(str(path))
    bands = [ds.GetRasterBand(min(b, ds.RasterCount)).ReadAsArray() for b in (1, 2, 3)]
    return np.stack(bands, axis=-1).astype(np.uint8)


def write_raster(path: Path, size: int, image: np.ndarray | None = None) -> None:
    """The synthetic texture, or ``image`` mirrored (reflected tiles) to size × size."""
    with open(path, "wb") as f:
        for y0 in range(0, size, 512):
            y1 = min(size, y0 + 512)
            if image is None:
                f.write(synthetic_rows(y0, y1, size).tobytes())
                continue
            h, w = image.shape[:2]
            rows = np.abs((np.arange(y0, y1) // h % 2) * (h - 1) - np.arange(y0, y1) % h)
            cols = np.abs((np.arange(size) // w % 2) * (w - 1) - np.arange(size) % w)
            f.write(np.ascontiguousarray(image[rows][:, cols]).tobytes())


class RawRaster:
    """Reads row bands of an H×W×3 uint8 raw file with pread (no mmap: touched pages must not count as RSS)."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        self.fd, self.height, self.width = os.open(path, os.O_RDONLY), height, width

    def read_rows(self, y0: int, y1: int):
        row = self.width * 3
        buf = os.pread(self.fd, (y1 - y0) * row, y0 * row)
        return np.frombuffer(buf, np.uint8).reshape(y1 - y0, self.width, 3).copy(), None

    def read_all(self) -> np.ndarray:
        return self.read_rows(0, self.height)[0]


def make_model(args):
    from factseg_core import FactSeg, FactSegConfig, load_model

    if args.model:
        return load_model(args.model, "cpu")
    torch.manual_seed(0)
    return FactSeg(FactSegConfig(args.backbone)).eval()


# --------------------------------------------------------------------------------------------- children
def child_reference(args) -> dict:
    """(a) The reference approach: full image, full-image accumulators, batch 1, eager NCHW."""
    import torch.nn.functional as F

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    model = make_model(args).to(device)
    image = RawRaster(Path(args.raster), args.size, args.size).read_all()
    rss_ready = peak_rss_bytes()
    height, width = image.shape[:2]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        total = None
        count = torch.zeros(height, width)
        for win in window_grid(height, width, args.patch, args.stride):
            x = torch.from_numpy(image[win.y0 : win.y1, win.x0 : win.x1]).permute(2, 0, 1)[None].float()
            x = (x - mean) / std
            ph, pw = -win.height % 32, -win.width % 32
            x = F.pad(x, (0, pw, 0, ph)).to(device)
            prob = model(x)[0, :, : win.height, : win.width].cpu()  # host accumulators, as the reference
            if total is None:
                total = torch.zeros(prob.shape[0], height, width)
            total[:, win.y0 : win.y1, win.x0 : win.x1] += prob
            count[win.y0 : win.y1, win.x0 : win.x1] += 1
        classes = (total / count).argmax(0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - t0
    if args.save:
        classes.tofile(args.save)
    return {"seconds": seconds, "rss_ready": rss_ready}


def make_engine_runner(args):
    from factseg_core.backends import OnnxRunner, TorchRunner

    if args.path in ("onnx", "onnx-int8"):
        return OnnxRunner(args.onnx, device="cpu" if args.path == "onnx-int8" else args.device)
    amp = {"torch-bf16": "bf16", "torch-fp16": "fp16"}.get(args.path, args.amp)
    return TorchRunner(make_model(args), device=args.device, amp=amp)


def child_engine(args) -> dict:
    """(b)/(c) The streaming engine reading bands from the raw file and writing class rows to a file."""
    from factseg_core.sweep import stream_predict

    runner = make_engine_runner(args)
    raster = RawRaster(Path(args.raster), args.size, args.size)
    out = open(args.save, "wb") if args.save else None
    rss_ready = peak_rss_bytes()

    def write_rows(y0, classes, _conf):
        if out is not None:
            out.write(classes.tobytes())

    t0 = time.perf_counter()
    stream_predict(runner, args.size, args.size, raster.read_rows, write_rows, args.patch, args.stride,
                   batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    if out is not None:
        out.close()
    return {"seconds": seconds, "rss_ready": rss_ready}


class CheapProbabilities(torch.nn.Module):
    """Stand-in for the network in the memory run: 1×1 conv + softmax, the model's class count."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x), dim=1)


def child_memory(args) -> dict:
    """Streaming engine on a procedurally generated raster (nothing on disk), cheap or real runner."""
    from factseg_core.backends import TorchRunner
    from factseg_core.sweep import stream_predict

    if args.path == "memory-real":
        runner = TorchRunner(make_model(args), device=args.device, copy_model=False)
    else:
        runner = TorchRunner(CheapProbabilities(16), device=args.device, channels_last=False)
    rss_ready = peak_rss_bytes()
    height, width = args.height or args.size, args.size
    t0 = time.perf_counter()
    stream_predict(runner, height, width, lambda a, b: (synthetic_rows(a, b, width), None), lambda *a: None,
                   args.patch, args.stride, batch_size=args.batch_size)
    return {"seconds": time.perf_counter() - t0, "rss_ready": rss_ready, "height": height}


def child_main(args) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    fn = {**{p: child_engine for p in ENGINE_PATHS}, "reference": child_reference,
          "memory-cheap": child_memory, "memory-real": child_memory}[args.path]
    conv = conv_throughput(2.0) if args.path in ("reference", *ENGINE_PATHS) else None
    result = fn(args)
    result.update(peak_rss=peak_rss_bytes(), conv_gflops=conv, load_average=os.getloadavg()[0])
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent
def run_child(args, path: str, size: int, extra: list[str] | None = None, timeout: int = 3600) -> dict:
    cmd = [sys.executable, str(HERE), "--child", path, "--size", str(size), "--patch", str(args.patch),
           "--stride", str(args.stride), "--batch-size", str(args.batch_size), "--backbone", args.backbone,
           "--device", args.device, *(extra or [])]
    if args.model:
        cmd += ["--model", args.model]
    if args.amp:
        cmd += ["--amp", args.amp]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {path} at {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def conv_throughput(seconds: float = 3.0) -> float:
    """GFLOP/s of a large 3×3 convolution (256→256 ch, 112²), the dominant op shape of the network."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 256, 112, 112)
    flops = 2 * 256 * 256 * 9 * 112 * 112
    with torch.inference_mode():
        conv(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            conv(x)
            n += 1
    return flops * n / (time.perf_counter() - t0) / 1e9


def model_flops(model, patch: int) -> float:
    """FLOPs (2 × MACs of convolutions and matmuls) of one patch×patch window."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, patch, patch))
    return float(counter.get_total_flops())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def input_image(args) -> np.ndarray | None:
    """The image tiled into the benchmark raster: ``--image``, else the demo scene for a trained model."""
    path = args.image or (str(DEMO_SCENE) if args.model and DEMO_SCENE.is_file() else None)
    if path is None:
        return None
    print(f"# input: {path} mirrored to each size")
    return read_image(path)


def quantize_for_bench(args, work: Path, image: np.ndarray | None) -> str:
    """The int8 model of this run, calibrated on ``--calibrate`` (default: the demo training images)."""
    from factseg_core.quantize import QuantizeOptions, calibration_windows, quantize_onnx

    sources = [Path(p) for p in args.calibrate.split(",")] if args.calibrate else (
        [DEMO_TRAIN] if args.model and DEMO_TRAIN.is_dir() else [])
    files = [f for s in sources for f in (sorted(s.glob("*.png")) + sorted(s.glob("*.tif")) if s.is_dir() else [s])]
    images = [read_image(str(f)) for f in files] or [image if image is not None else synthetic_rows(0, 1024, 1024)]
    t0 = time.perf_counter()
    target = work / "model.int8.onnx"
    quantize_onnx(args.onnx_path, target, calibration_windows(images), QuantizeOptions())
    what = f"{len(files)} file(s) from {', '.join(map(str, sources))}" if files else "crops of the input"
    print(f"# quantized to int8 (QDQ, per-channel) in {time.perf_counter() - t0:.0f} s, calibrated on {what}")
    return str(target)


def measure_size(args, paths, size, work, image, gflops_window, conv_gflops, report) -> None:
    """Every path at one size, side by side; agreement with the exact torch engine (else the first path)."""
    raster = work / f"raster_{size}.raw"
    if not raster.exists():
        write_raster(raster, size, image)
    windows = len(window_grid(size, size, args.patch, args.stride))
    mp = size * size / 1e6
    gflop_per_mp = windows * gflops_window / mp
    rows = {}
    for path in paths:
        extra = ["--raster", str(raster), "--save", str(work / f"classes_{path}_{size}.raw")]
        if path in ("onnx", "onnx-int8"):
            extra += ["--onnx", args.int8_path if path == "onnx-int8" else args.onnx_path]
        if path == "reference" and 16 * 4 * size * size * 1.1 > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):
            print(f"{size:>7} {path:<10} not run: its accumulators alone need {gib(17 * 4 * size * size)}")
            continue
        r = run_child(args, path, size, extra)
        rows[path] = {"size": size, "path": path, "windows": windows, "mp_per_s": mp / r["seconds"],
                      "bound_mp_per_s": r["conv_gflops"] / gflop_per_mp, **r}
    base = "torch" if "torch" in rows else next(iter(rows), None)
    exact = np.fromfile(work / f"classes_{base}_{size}.raw", np.uint8) if base else None
    for path, row in rows.items():
        ref, torch_row = rows.get("reference"), rows.get("torch")
        row["ratio_to_reference"] = row["mp_per_s"] / ref["mp_per_s"] if ref else None
        row["ratio_to_torch"] = row["mp_per_s"] / torch_row["mp_per_s"] if torch_row else None
        row["fraction_of_bound"] = row["mp_per_s"] / row["bound_mp_per_s"]
        row["agreement"] = float((np.fromfile(work / f"classes_{path}_{size}.raw", np.uint8) == exact).mean())
        row["agreement_with"] = base
        report["results"].append(row)
        fmt = lambda v, w: f"{v:{w}.2f}" if v is not None else " " * (w - 1) + "-"  # noqa: E731
        print(f"{size:>7} {path:<10} {windows:>7} {row['seconds']:>8.1f} {row['mp_per_s']:>7.3f} "
              f"{fmt(row['ratio_to_reference'], 6)} {fmt(row['ratio_to_torch'], 7)} {row['bound_mp_per_s']:>7.3f} "
              f"{100 * row['fraction_of_bound']:>6.0f}% {gib(row['peak_rss']):>10} {100 * row['agreement']:>8.3f}% "
              f"{row['load_average']:>5.1f}", flush=True)
    print(f"{size:>7} compute bound = conv GFLOP/s / {gflop_per_mp:.0f} GFLOP per output MP ({windows} windows × "
          f"{gflops_window:.0f} GFLOP / {mp:.2f} MP); {conv_gflops:.0f} GFLOP/s measured at start → "
          f"{conv_gflops / gflop_per_mp:.3f} MP/s; agreement is with {base}" +
          ("" if args.model else " (random weights: agreement is indicative only)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sliding-window inference benchmark", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--sizes", default=None, help="comma-separated square sizes (default 2048,4096,8192; --quick: 2048)")
    p.add_argument("--quick", action="store_true", help="2k only, memory with the cheap runner only")
    p.add_argument("--paths", default="reference,torch,onnx,torch-bf16,onnx-int8",
                   help="subset of reference,torch,onnx,torch-bf16,onnx-int8 and, on CUDA, torch-fp16")
    p.add_argument("--image", default=None, help="raster tiled into the input (default: the demo scene with --model)")
    p.add_argument("--calibrate", default=None,
                   help="folder/image(s), comma-separated, to calibrate int8 on (default: the demo training images, "
                        "else crops of the input)")
    p.add_argument("--model", default=None, help="checkpoint (default: FactSeg with seeded random weights)")
    p.add_argument("--backbone", default="resnet50", help="backbone of the random-weight model")
    p.add_argument("--patch", type=int, default=896)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--fast-stride", type=int, default=768, help="stride of the fast mode (0: skip)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu or cuda (engine paths; the reference stays on CPU)")
    p.add_argument("--amp", default=None, help="bf16/fp16 for the torch engine on CUDA")
    p.add_argument("--memory-size", type=int, default=20000, help="side of the memory run (0: skip)")
    p.add_argument("--memory-model", choices=["cheap", "real"], default=None,
                   help="also run the real model on a full-width strip (default: real unless --quick)")
    p.add_argument("--work-dir", default=None, help="where rasters and the ONNX export go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write all figures to this JSON file")
    # child-only options
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--raster", default=None, help=argparse.SUPPRESS)
    p.add_argument("--onnx", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.path = args.child
        child_main(args)
        return 0

    sizes = [int(s) for s in (args.sizes or ("2048" if args.quick else "2048,4096,8192")).split(",")]
    paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    memory_model = args.memory_model or ("cheap" if args.quick else "real")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="factseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_threads": os.cpu_count(),
                    "load_average_at_start": os.getloadavg(), "results": []}
    print(f"# {report['command']}\n# {os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.2f} at start; "
          f"torch {torch.__version__}; work dir {work}")

    torch.set_num_threads(os.cpu_count() or 1)
    model = make_model(args)
    name = f"FactSeg-{model.config.backbone}" + ("" if args.model else " (seeded random weights)")
    gflops_window = model_flops(model, args.patch) / 1e9
    conv_gflops = conv_throughput()
    print(f"# model {name}: {gflops_window:.0f} GFLOP per {args.patch}² window; "
          f"measured conv throughput {conv_gflops:.0f} GFLOP/s")
    report.update(model=name, gflop_per_window=gflops_window, conv_gflops=conv_gflops)
    image = input_image(args)
    if {"onnx", "onnx-int8"} & set(paths):
        from factseg_core.onnx_export import export_onnx

        args.onnx_path = str(work / "model.onnx")
        t0 = time.perf_counter()
        export_onnx(model, args.onnx_path)
        print(f"# exported ONNX in {time.perf_counter() - t0:.0f} s")
    if "onnx-int8" in paths:
        args.int8_path = quantize_for_bench(args, work, image)
    del model

    header = (f"{'size':>7} {'path':<10} {'windows':>7} {'seconds':>8} {'MP/s':>7} {'× ref':>6} {'× torch':>7} "
              f"{'bound':>7} {'% bound':>7} {'peak RSS':>10} {'agreement':>9} {'load':>5}")
    print(header)
    for size in sizes if paths else []:
        measure_size(args, paths, size, work, image, gflops_window, conv_gflops, report)

    if args.fast_stride and "torch" in paths:
        size = sizes[0]
        raster = work / f"raster_{size}.raw"
        fast_file = work / f"classes_fast_{size}.raw"
        fast_args = argparse.Namespace(**{**vars(args), "stride": args.fast_stride})
        r = run_child(fast_args, "torch", size, ["--raster", str(raster), "--save", str(fast_file)])
        exact = np.fromfile(work / f"classes_torch_{size}.raw", np.uint8)
        agree = float((np.fromfile(fast_file, np.uint8) == exact).mean())
        exact_s = next(x["seconds"] for x in report["results"] if x["size"] == size and x["path"] == "torch")
        windows = len(window_grid(size, size, args.patch, args.fast_stride))
        print(f"# fast mode (stride {args.fast_stride}) at {size}²: {windows} windows, {r['seconds']:.1f} s "
              f"({exact_s / r['seconds']:.2f}× the exact engine), class agreement with stride {args.stride}: "
              f"{100 * agree:.2f}%" + ("" if args.model else " (random weights: agreement is indicative only)"))
        report["fast_mode"] = {"stride": args.fast_stride, "size": size, "seconds": r["seconds"],
                               "speedup": exact_s / r["seconds"], "agreement": agree}

    if args.memory_size:
        side = args.memory_size
        print(f"# streaming memory, {side} px wide (the reference approach would need {gib(17 * 4 * side * side)} "
              f"for its accumulators alone at {side}²):")
        strip = args.patch + 2 * args.stride + 1  # three window rows: a carried row and the final pair
        runs = [("memory-cheap", side, side, "cheap 1×1-conv runner"),
                ("memory-cheap", side, strip, "cheap 1×1-conv runner")]
        if memory_model == "real":
            runs += [("memory-cheap", 2048, args.patch, "cheap 1×1-conv runner"),
                     ("memory-real", 2048, args.patch, f"real {name.split(' ')[0]} runner")]
        report["memory"] = []
        for path, width, height, what in runs:
            r = run_child(args, path, width, ["--height", str(height)])
            print(f"#   {width}×{height} ({what}): peak RSS {gib(r['peak_rss'])}, {r['seconds']:.0f} s", flush=True)
            report["memory"].append({"width": width, "height": height, "runner": what, **r})
        if memory_model == "real":
            full, _, cheap, real = report["memory"]
            delta = real["peak_rss"] - cheap["peak_rss"]
            print(f"#   the real model adds {gib(delta)} (weights + activations of one window, independent of the "
                  f"raster size): {side}² with it ≈ {gib(full['peak_rss'] + delta)}")
            report["memory_estimate_real_full"] = full["peak_rss"] + delta
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
