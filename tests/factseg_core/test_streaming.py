"""The streaming/chunked engine against the array-level reference ``sliding_predict``.

Exactness criterion (the issue's): probabilities within 1e-5, class ids equal wherever the reference's
top-two margin exceeds 1e-5. Sizes cover: not multiples of the stride, smaller than a patch, 1-pixel strips.
A narrow real FactSeg (ResNet-18, 32-channel FPN, 16-channel decoder) keeps the many windows cheap.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from factseg_core import FactSeg, FactSegConfig, sliding_predict
from factseg_core.backends import TorchRunner
from factseg_core.chunks import chunk_probabilities, predict_chunk
from factseg_core.config import NODATA_CLASS
from factseg_core.engine import NODATA_FILL, Cancelled, WindowEngine, WindowRunner, effective_batch_size
from factseg_core.sweep import RowSweep, stream_predict
from factseg_core.windows import Window, plan_chunks, source_window, window_grid, window_starts, windows_touching

PATCH, STRIDE = 64, 32
TOL = 1e-5
SIZES = [(90, 130), (40, 50), (1, 150), (150, 1), (64, 64), (97, 33)]


@pytest.fixture(scope="module")
def narrow_model():
    torch.manual_seed(1)
    model = FactSeg(FactSegConfig("resnet18", 16, 32, 16))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.fg_head.bias.copy_(torch.linspace(-1, 1, 16))
    return model.eval()


def runner_with_batches(model):
    """Exact layout, and batches really batched (CPU runners default to one window per call)."""
    return TorchRunner(model, "cpu", channels_last=False, max_batch=8)


@pytest.fixture(scope="module")
def runner(narrow_model):
    return runner_with_batches(narrow_model)


_REF_CACHE: dict = {}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 7 * h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference(model, img: np.ndarray, patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
    key = (id(model), img.tobytes(), img.shape, patch, stride)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = sliding_predict(model, img, patch, stride, batch_size=4)
    return _REF_CACHE[key]


def assert_classes_match(classes: np.ndarray, probs: np.ndarray, valid: np.ndarray | None = None) -> None:
    top2 = np.sort(probs, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > TOL
    if valid is not None:
        decided &= valid
        assert (classes[~valid] == NODATA_CLASS).all()
    expected = probs.argmax(0)
    assert decided.mean() > 0.5  # the comparison is not vacuous
    mismatch = (classes != expected) & decided
    assert not mismatch.any(), f"{mismatch.sum()} decided pixels differ"


def run_chunks(runner, img, valid=None, chunk_size=64, patch=PATCH, stride=STRIDE, **kw):
    h, w = img.shape[:2]
    classes = np.full((h, w), 77, np.uint8)
    conf = np.full((h, w), -1.0, np.float32)
    for c in plan_chunks(h, w, patch, stride, chunk_size):
        px = img[c.src.y0 : c.src.y1, c.src.x0 : c.src.x1]
        vd = None if valid is None else valid[c.src.y0 : c.src.y1, c.src.x0 : c.src.x1]
        k, p = predict_chunk(runner, px, vd, (h, w), c.src, c.out, patch, stride, confidence=True, **kw)
        classes[c.out.y0 : c.out.y1, c.out.x0 : c.out.x1] = k
        conf[c.out.y0 : c.out.y1, c.out.x0 : c.out.x1] = p
    assert (classes != 77).all() or (classes == 77).sum() == 0
    return classes, conf


def run_stream(runner, img, valid=None, patch=PATCH, stride=STRIDE, log=None, **kw):
    h, w = img.shape[:2]
    classes = np.full((h, w), 77, np.uint8)
    conf = np.full((h, w), -1.0, np.float32)
    written = [0]

    def read_rows(y0, y1):
        if log is not None:
            log.append(("read", y0, y1, written[0]))
        return img[y0:y1].copy(), None if valid is None else valid[y0:y1].copy()

    def write_rows(y0, k, p):
        assert y0 == written[0], "rows must be written in order, each once"
        classes[y0 : y0 + len(k)] = k
        conf[y0 : y0 + len(k)] = p
        written[0] += len(k)

    stream_predict(runner, h, w, read_rows, write_rows, patch, stride, confidence=True, **kw)
    assert written[0] == h
    return classes, conf


# ------------------------------------------------------------------------------------------- planning
@pytest.mark.parametrize("size", [(1, 1), (1, 3000), (895, 897), (2048, 2049), (5000, 300), (100, 100)])
@pytest.mark.parametrize("chunk", [512, 2048, 3000])
def test_plan_chunks_tiles_exactly_once_and_src_is_window_union(size, chunk):
    h, w = size
    cover = np.zeros((h, w), np.int32)
    chunks = plan_chunks(h, w, 896, 512, chunk)
    grid = window_grid(h, w, 896, 512)
    for i, c in enumerate(chunks):
        assert c.index == i
        cover[c.out.y0 : c.out.y1, c.out.x0 : c.out.x1] += 1
        assert c.out.y0 % 512 == 0 and c.out.x0 % 512 == 0
        touching = [g for g in grid if g.y0 < c.out.y1 and g.y1 > c.out.y0 and g.x0 < c.out.x1 and g.x1 > c.out.x0]
        union = Window(min(g.y0 for g in touching), min(g.x0 for g in touching),
                       max(g.y1 for g in touching), max(g.x1 for g in touching))
        assert c.src == union == source_window((h, w), c.out, 896, 512)
    assert (cover == 1).all()


def brute_force_plan(h, w, patch, stride, chunk_size):
    """The plan by its definition: stride-aligned tiles, row-major; src = union of the 2-D grid windows touching out."""
    step = max(stride, chunk_size // stride * stride)
    grid = window_grid(h, w, patch, stride)
    plan = []
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            out = Window(y0, x0, min(y0 + step, h), min(x0 + step, w))
            touching = [g for g in grid if g.y0 < out.y1 and g.y1 > out.y0 and g.x0 < out.x1 and g.x1 > out.x0]
            src = Window(min(g.y0 for g in touching), min(g.x0 for g in touching),
                         max(g.y1 for g in touching), max(g.x1 for g in touching))
            plan.append((len(plan), out, src))
    return plan


# (patch, stride): stride == patch, stride 1, stride not dividing patch, the product's 896/512 scaled down.
@pytest.mark.parametrize("patch,stride", [(1, 1), (4, 4), (5, 2), (7, 3), (8, 1), (16, 9), (28, 16), (32, 32)])
def test_plan_chunks_equals_brute_force_definition(patch, stride):
    sides = [1, 2, patch - 1, patch, patch + 1, 2 * patch + stride - 1, 61]
    sides = sorted({s for s in sides if s >= 1})
    chunk_sizes = sorted({1, max(1, stride - 1), stride, stride + 1, 2 * stride, 3 * stride + 1, 1000})
    for h in sides:
        for w in sides:
            for chunk_size in chunk_sizes:
                got = [(c.index, c.out, c.src) for c in plan_chunks(h, w, patch, stride, chunk_size)]
                assert got == brute_force_plan(h, w, patch, stride, chunk_size), (h, w, patch, stride, chunk_size)


def test_plan_chunks_on_a_huge_raster_matches_per_axis_scan():
    """200k² px (9604 chunks): every chunk's src equals the scan over the window starts of its row and column."""
    h, w, patch, stride = 200_000, 150_001, 896, 512
    chunks = plan_chunks(h, w, patch, stride, 2048)
    rows, cols = -(-h // 2048), -(-w // 2048)
    assert len(chunks) == rows * cols and [c.index for c in chunks] == list(range(len(chunks)))

    def scan(length, a, b):
        touching = [s for s in window_starts(length, patch, stride) if s < b and s + min(patch, length) > a]
        return touching[0], touching[-1] + min(patch, length)

    ys = {c.out.y0: scan(h, c.out.y0, c.out.y1) for c in chunks[::cols]}
    xs = {c.out.x0: scan(w, c.out.x0, c.out.x1) for c in chunks[:cols]}
    for i, c in enumerate(chunks):
        assert (c.out.y0, c.out.x0) == (i // cols * 2048, i % cols * 2048)
        assert c.out.y1 == min(c.out.y0 + 2048, h) and c.out.x1 == min(c.out.x0 + 2048, w)
        (sy0, sy1), (sx0, sx1) = ys[c.out.y0], xs[c.out.x0]
        assert c.src == Window(sy0, sx0, sy1, sx1)


def test_plan_chunks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        plan_chunks(0, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(10, 10, chunk_size=0)
    with pytest.raises(ValueError, match="stride"):
        plan_chunks(10, 10, patch=64, stride=128)


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("size", SIZES)
def test_chunks_match_reference(runner, narrow_model, size):
    img = image(*size)
    ref = reference(narrow_model, img)
    classes, conf = run_chunks(runner, img, chunk_size=32 if size == SIZES[0] else 64)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_stream_matches_reference(runner, narrow_model, size):
    img = image(*size)
    ref = reference(narrow_model, img)
    classes, conf = run_stream(runner, img, batch_size=3)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)


@pytest.mark.parametrize("patch,stride", [(64, 20), (64, 64), (64, 40), (96, 32)])
def test_stream_matches_reference_for_other_grids(runner, narrow_model, patch, stride):
    """Strides below half the patch (three window rows overlap), equal to it, and shifted last rows."""
    img = image(150, 110)
    ref = reference(narrow_model, img, patch, stride)
    classes, conf = run_stream(runner, img, patch=patch, stride=stride, batch_size=2)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)


def test_chunk_probabilities_match_reference(runner, narrow_model):
    img = image(90, 130)
    ref = reference(narrow_model, img)
    h, w = img.shape[:2]
    for c in plan_chunks(h, w, PATCH, STRIDE, 64):
        px = img[c.src.y0 : c.src.y1, c.src.x0 : c.src.x1]
        probs = chunk_probabilities(runner, px, None, (h, w), c.src, c.out, PATCH, STRIDE).numpy()
        np.testing.assert_allclose(probs, ref[:, c.out.y0 : c.out.y1, c.out.x0 : c.out.x1], atol=TOL, rtol=0)


def test_stream_without_prefetch_and_batch_one(runner, narrow_model):
    img = image(97, 33)
    ref = reference(narrow_model, img)
    classes, conf = run_stream(runner, img, batch_size=1, prefetch=False)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)


def test_default_cpu_runner_agrees(narrow_model):
    img = image(90, 130)
    ref = reference(narrow_model, img)
    default = TorchRunner(narrow_model, "cpu")
    assert default.channels_last and default.max_batch == 1
    assert effective_batch_size(default, 4) == 1 and effective_batch_size(runner_with_batches(narrow_model), 4) == 4
    classes, conf = run_stream(default, img)
    np.testing.assert_allclose(conf, ref.max(0), atol=1e-4, rtol=0)
    assert (classes == ref.argmax(0)).mean() > 0.999


def test_default_protocol_896_512(narrow_model, runner):
    """The paper's protocol on a strip that needs two overlapping 70×896 windows."""
    img = image(70, 1000)
    ref = sliding_predict(narrow_model, img)
    classes, conf = run_stream(runner, img, patch=896, stride=512)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)


# -------------------------------------------------------------------------------------- streaming shape
def test_stream_reads_each_row_once_and_buffers_a_bounded_band(runner):
    img = image(200, 20)
    log: list = []
    run_stream(runner, img, log=log)
    reads = [(a, b) for _, a, b, _ in log]
    assert reads[0][0] == 0 and reads[-1][1] == 200
    assert all(prev[1] == nxt[0] for prev, nxt in zip(reads, reads[1:])), reads
    # Never asks for rows more than one window height plus a prefetched stride ahead of what it wrote.
    assert max(b - written for _, _, b, written in log) <= PATCH + 2 * STRIDE


def test_sweep_keeps_only_the_overlapping_rows(runner):
    """The float accumulators carried down the raster span patch − stride rows, whatever its height."""
    for height in (5000, 5001, 20000, 50000):  # last window row 8, 9, 160 and 48 rows below the one before
        sweep = RowSweep(WindowEngine(runner, 4, False, None), height, 300, 896, 512, False)
        assert tuple(sweep.carry.shape) == (16, 896 - 512, 300)
        assert max(end - y0 for y0, end in sweep.spans) <= 896 + 512


# ---------------------------------------------------------------------------------------------- nodata
class CountingRunner:
    """Wraps a runner and counts the windows it is asked to compute."""

    def __init__(self, inner: WindowRunner):
        self.inner, self.windows = inner, 0
        self.num_classes, self.device, self.name = inner.num_classes, "cpu", "counting"
        self.torch_device, self.max_batch = inner.torch_device, inner.max_batch
        self.classes, self.model_info = inner.classes, inner.model_info

    def forward_device(self, batch):
        self.windows += batch.shape[0]
        return self.inner.forward_device(batch)

    __call__ = forward_device


def nodata_case():
    img = image(96, 160)
    valid = np.ones(img.shape[:2], bool)
    valid[:, 96:] = False  # the two rightmost window columns (x0 = 96) are entirely nodata
    valid[10:30, 20:50] = False  # a hole inside valid windows
    valid[0, 0] = False
    return img, valid


@pytest.mark.parametrize("mode", ["chunks", "stream"])
def test_nodata_is_255_skipped_and_fed_as_mean(runner, narrow_model, mode):
    img, valid = nodata_case()
    painted = img.copy()
    painted[~valid] = NODATA_FILL
    ref = reference(narrow_model, painted)
    counting = CountingRunner(runner)
    if mode == "chunks":
        classes, conf = run_chunks(counting, img, valid, chunk_size=1000)
    else:
        classes, conf = run_stream(counting, img, valid)
    grid = window_grid(96, 160, PATCH, STRIDE)
    needed = sum(valid[w.y0 : w.y1, w.x0 : w.x1].any() for w in grid)
    assert counting.windows == needed < len(grid)
    assert_classes_match(classes, ref, valid)
    assert (conf[~valid] == 0).all()
    np.testing.assert_allclose(conf[valid], ref.max(0)[valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["chunks", "stream"])
def test_all_nodata_costs_nothing(runner, mode):
    img = image(70, 90)
    valid = np.zeros(img.shape[:2], bool)
    counting = CountingRunner(runner)
    classes, conf = (run_chunks if mode == "chunks" else run_stream)(counting, img, valid)
    assert counting.windows == 0
    assert (classes == NODATA_CLASS).all() and (conf == 0).all()


# ------------------------------------------------------------------------------------------ TTA, cancel
class FlipTTAModel(torch.nn.Module):
    """Reference definition of flip TTA on whole (unpadded: 64-px) windows: mean over id, h-flip, v-flip."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        p = self.model(x) + self.model(x.flip(3)).flip(3) + self.model(x.flip(2)).flip(2)
        return p / 3


def test_flip_tta_matches_its_definition(runner, narrow_model):
    img = image(96, 128)  # windows of 64 px: a multiple of 32, so no padding moves under the flips
    ref = sliding_predict(FlipTTAModel(narrow_model), img, PATCH, STRIDE)
    classes, conf = run_stream(runner, img, tta=True)
    assert_classes_match(classes, ref)
    np.testing.assert_allclose(conf, ref.max(0), atol=TOL, rtol=0)
    plain = reference(narrow_model, img)
    assert np.abs(plain.max(0) - conf).max() > 1e-3  # TTA really changed something


@pytest.mark.parametrize("mode", ["chunks", "stream"])
def test_cancel_stops_between_batches(runner, mode):
    img = image(128, 128)
    counting = CountingRunner(runner)

    def cancel():
        return counting.windows >= 2

    with pytest.raises(Cancelled):
        if mode == "chunks":
            run_chunks(counting, img, chunk_size=1000, batch_size=2, cancel=cancel)
        else:
            run_stream(counting, img, batch_size=2, cancel=cancel)
    assert counting.windows == 2  # of 9


def test_cancelled_stream_leaves_no_reader_running(runner):
    """The prefetching reader is shut down on cancel: no read_rows call outlives stream_predict."""
    img = image(300, 64)
    reads: list[int] = []

    def slow_read(y0, y1):
        time.sleep(0.05)
        reads.append(y0)
        return img[y0:y1].copy(), None

    with pytest.raises(Cancelled) as caught:  # its traceback keeps the sweep's frame (and reader) referenced
        stream_predict(runner, 300, 64, slow_read, lambda *a: None, PATCH, STRIDE, cancel=lambda: len(reads) >= 2)
    assert caught.traceback
    seen = len(reads)
    assert not [t for t in threading.enumerate() if t.name.startswith("factseg-read")]
    time.sleep(0.1)
    bands = len(window_starts(300, PATCH, STRIDE)) - 1  # one read per group; the last two rows form one
    assert len(reads) == seen < bands


def test_runners_satisfy_the_engine_protocol(runner):
    """Every member of WindowRunner is present on the torch runner (the ONNX one: tests/test_onnx.py)."""
    members = [*WindowRunner.__annotations__, "forward_device", "__call__"]
    assert {"torch_device", "max_batch", "classes", "model_info", "num_classes"} <= set(members)
    assert [m for m in members if not hasattr(runner, m)] == []
    assert [m for m in members if not hasattr(CountingRunner(runner), m)] == []


def test_engine_names_are_exported_from_the_package():

    import factseg_core
    from factseg_core import backends, chunks, engine, runners, sweep, windows

    for module in (chunks, engine, sweep, windows):
        for name in module.__all__:
            if name in factseg_core.__all__:
                assert getattr(factseg_core, name) is getattr(module, name), name
    for name in ("predict_chunk", "chunk_probabilities", "stream_predict", "Cancelled", "effective_batch_size",
                 "WindowRunner", "plan_chunks", "plan_size", "source_window", "windows_touching", "Chunk"):
        assert name in factseg_core.__all__, name
    assert factseg_core.make_runner is runners.make_runner and backends.WindowRunner is engine.WindowRunner
    assert not (Path(factseg_core.__file__).parent / "streaming.py").exists()  # no compatibility module: one home each


def test_progress_reaches_one(runner):
    seen: list[float] = []
    run_stream(runner, image(100, 100), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 1


# ------------------------------------------------------------------------------------------- bad input
def test_predict_chunk_rejects_bad_input(runner):
    img = image(100, 100)
    c = plan_chunks(100, 100, PATCH, STRIDE, 64)[0]
    px = img[c.src.y0 : c.src.y1, c.src.x0 : c.src.x1]
    with pytest.raises(ValueError, match="uint8"):
        predict_chunk(runner, px.astype(np.float32), None, (100, 100), c.src, c.out, PATCH, STRIDE)
    with pytest.raises(ValueError, match="bool validity mask"):
        predict_chunk(runner, px, np.ones((3, 3), bool), (100, 100), c.src, c.out, PATCH, STRIDE)
    small = Window(c.src.y0, c.src.x0, c.src.y1 - 1, c.src.x1)
    with pytest.raises(ValueError, match="does not hold all windows"):
        predict_chunk(runner, px[:-1], None, (100, 100), small, c.out, PATCH, STRIDE)
    with pytest.raises(ValueError, match="outside"):
        predict_chunk(runner, px, None, (50, 50), c.src, Window(0, 0, 60, 60), PATCH, STRIDE)
    with pytest.raises(ValueError, match="batch_size"):
        predict_chunk(runner, px, None, (100, 100), c.src, c.out, PATCH, STRIDE, batch_size=0)


def test_stream_rejects_bad_reader(runner):
    with pytest.raises(ValueError, match=r"read_rows\(0, 64\)"):
        stream_predict(runner, 100, 100, lambda a, b: (np.zeros((b - a, 99, 3), np.uint8), None),
                       lambda *a: None, PATCH, STRIDE)
    with pytest.raises(ValueError, match="must return"):
        stream_predict(runner, 100, 100, lambda a, b: np.zeros((b - a, 100, 3), np.uint8),
                       lambda *a: None, PATCH, STRIDE, prefetch=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_cuda_stream_matches_cpu(narrow_model, amp):
    img = image(150, 200)
    ref = reference(narrow_model, img)
    classes, conf = run_stream(TorchRunner(narrow_model, "cuda", amp=amp), img)
    if amp is None:
        np.testing.assert_allclose(conf, ref.max(0), atol=1e-4, rtol=0)
        assert (classes == ref.argmax(0)).mean() > 0.999
    else:
        assert (classes == ref.argmax(0)).mean() > 0.95


def test_cpu_bf16_is_an_approximate_opt_in(narrow_model):
    img = image(150, 200)
    ref = reference(narrow_model, img)
    runner = TorchRunner(narrow_model, "cpu", amp="bf16")
    probs = runner(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64), atol=1e-5, rtol=0)  # fusion stays float32
    classes, _ = run_stream(runner, img)
    assert (classes == ref.argmax(0)).mean() > 0.95


@pytest.mark.parametrize("size, patch, stride", [((150, 200), 64, 32), ((61, 7), 16, 9), ((1, 300), 28, 16)])
def test_windows_touching_counts_the_grid_windows_of_each_chunk(size, patch, stride):
    grid = window_grid(*size, patch, stride)
    for chunk in plan_chunks(*size, patch, stride, chunk_size=stride):
        o = chunk.out
        expected = sum(1 for w in grid if w.y0 < o.y1 and w.y1 > o.y0 and w.x0 < o.x1 and w.x1 > o.x0)
        assert windows_touching(size, o, patch, stride) == expected
