"""``python -m worker.segment`` as a careless user and a killed job meet it: refusals before any compute (exit 2,
one sentence), inputs never overwritten, all outputs published together or not at all, SIGTERM like Ctrl-C."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from worker_support import PYTHON, REPO, run_cli, start_worker, write_rgb

from worker.client import WorkerClient
from worker.io.outputs import partial_path
from worker.io.raster_source import RasterSource

gdal.UseExceptions()
FAST = ["--patch", "64", "--stride", "32", "--chunk-size", "64", "--quiet"]
SLOW = ["--patch", "64", "--stride", "8", "--chunk-size", "64", "--quiet"]  # seconds per chunk on one thread
MEDIUM = ["--patch", "64", "--stride", "16", "--chunk-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, tmp_path_factory):
    with start_worker(tiny_checkpoint, f"ipc://{tmp_path_factory.mktemp('safety')}/w.ipc") as w:
        yield w


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    pixels = np.random.default_rng(3).integers(1, 256, (128, 192, 3), dtype=np.uint8)  # 6 chunks of 64²
    return write_rgb(tmp_path_factory.mktemp("safety_scene") / "scene.tif", pixels)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    pixels = np.random.default_rng(4).integers(1, 256, (64, 128, 3), dtype=np.uint8)  # 2 chunks of 64²
    return write_rgb(tmp_path_factory.mktemp("safety_small") / "small.tif", pixels)


def one_sentence(stderr: str) -> str:
    """The CLI's whole stderr, checked to be one line from the CLI, not a traceback or GDAL's chatter."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segment: "), stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden partial files (or their sidecars) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name and p.is_file())


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/sys")  # root ignores permission bits, but cannot create files in sysfs
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def _garbage_key(tmp_path: Path) -> Path:
    path = tmp_path / "server.key"
    path.write_text("not a key\n")
    return path


# (extra arguments builder, expected part of the one sentence)
BAD_OPTIONS: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "extent_nan": (lambda s, t: [str(s), str(t / "o.tif"), "--extent", "nan,nan,nan,nan"], "four finite numbers"),
    "extent_inf": (lambda s, t: [str(s), str(t / "o.tif"), "--extent", "0,0,inf,inf"], "four finite numbers"),
    "extent_negative": (lambda s, t: [str(s), str(t / "o.tif"), "--extent", "-5,0,5,5"], "--OPTION=VALUE"),
    "extent_huge": (lambda s, t: [str(s), str(t / "o.tif"), "--extent=-1e308,1e308,1e308,1e308"], "is empty"),
    "unwritable_folder": (lambda s, t: [str(s), str(unwritable_folder(t) / "o.tif")], "is not writable"),
    "missing_folder": (lambda s, t: [str(s), str(t / "no" / "o.tif")], "does not exist"),
    "folder_output": (lambda s, t: [str(s), str(t)], "is an existing folder"),
    "missing_server_key": (lambda s, t: [str(s), str(t / "o.tif"), "--server-key", str(t / "server.key"),
                                         "--client-key", str(s)], "key file .*server.key does not exist"),
    "missing_client_key": (lambda s, t: [str(s), str(t / "o.tif"), "--server-key", str(s),
                                         "--client-key", str(t / "c.key_secret")], "c.key_secret does not exist"),
    "one_key_only": (lambda s, t: [str(s), str(t / "o.tif"), "--server-key", str(s)], "needs both"),
    "garbage_key": (lambda s, t: [str(s), str(t / "o.tif"), "--server-key", str(_garbage_key(t)),
                                  "--client-key", str(_garbage_key(t))], "holds no usable public key"),
    "zero_patch": (lambda s, t: [str(s), str(t / "o.tif"), "--patch", "0"], "whole number of at least 1, got 0"),
    "nan_timeout": (lambda s, t: [str(s), str(t / "o.tif"), "--timeout", "nan"], "seconds between"),
    "negative_retries": (lambda s, t: [str(s), str(t / "o.tif"), "--retries=-1"], "from 0 to 100"),
    "patch_too_big": (lambda s, t: [str(s), str(t / "o.tif"), "--patch", "100000"],
                      r"the worker refuses these options: --patch = 100000 is outside \[32, "),
    "stride_over_patch": (lambda s, t: [str(s), str(t / "o.tif"), "--stride", "100"], "refuses.*--stride = 100"),
    "band_zero": (lambda s, t: [str(s), str(t / "o.tif"), "--bands", "0,1,2"], "start at 1"),
    "band_missing": (lambda s, t: [str(s), str(t / "o.tif"), "--bands", "1,2,7"], "band 7 does not exist"),
    "vector_not_gpkg": (lambda s, t: [str(s), str(t / "o.tif"), "--vector", str(t / "o.shp")], "ending in .gpkg"),
    "stats_is_output": (lambda s, t: [str(s), str(t / "o.tif"), "--stats-json", str(t / "o.tif")], "same file"),
    "stats_is_input": (lambda s, t: [str(s), str(t / "o.tif"), "--stats-json", str(s)], "is the input"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_refused_before_compute_with_one_sentence(worker, scene, tmp_path, case):
    build, expected = BAD_OPTIONS[case]
    args = build(scene, tmp_path)
    before = sorted(tmp_path.iterdir())
    result = run_cli(*args[:2], "--connect", worker.endpoint, *FAST, *args[2:])  # the case's options win
    assert result.returncode == 2, result.stderr
    assert re.search(expected, one_sentence(result.stderr)), result.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing written, not even a partial


def test_huge_extents_are_clamped_to_the_raster(scene):
    source = RasterSource(str(scene), (-1e308, -1e308, 1e308, 1e308))  # 1e308 / 0.5 m overflows to inf
    assert (source.row0, source.col0, source.height, source.width) == (0, 0, 128, 192)
    assert source.files == [str(scene)]


def test_connect_without_a_scheme_is_refused(scene, tmp_path):
    result = run_cli(str(scene), str(tmp_path / "o.tif"), "--connect", "localhost:5555")
    assert result.returncode == 2
    assert "has no scheme; write tcp://localhost:5555" in one_sentence(result.stderr)


def test_output_that_is_the_input_leaves_it_byte_identical(worker, scene, tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(scene.read_bytes())
    original = source.read_bytes()
    (tmp_path / "alias.tif").symlink_to(source)
    confidence_victim = tmp_path / "x_confidence.tif"
    confidence_victim.write_bytes(original)
    gdal.BuildVRT(str(tmp_path / "mosaic.vrt"), [str(source)]).FlushCache()
    attempts = [
        [str(tmp_path / "mosaic.vrt"), str(source)],  # a source file of a VRT input is an input too
        [str(source), str(source)],
        [str(source), str(tmp_path / "." / "in.tif")],
        [str(tmp_path / "alias.tif"), str(source)],
        [str(confidence_victim), str(tmp_path / "x.tif"), "--confidence"],  # OUT_confidence.tif is the input
    ]
    for args in attempts:
        result = run_cli(*args, "--connect", worker.endpoint, *FAST)
        assert result.returncode == 2, result.stderr
        assert "is the input" in one_sentence(result.stderr)
    assert source.read_bytes() == original and confidence_victim.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.tif", "in.tif", "mosaic.vrt", "x_confidence.tif"]


def test_folder_output_leaves_no_partial_and_computes_nothing(worker, scene, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    log_before = worker.log_path.read_text()
    result = run_cli(str(scene), str(folder), "--connect", worker.endpoint, "--vector", str(tmp_path / "o.gpkg"),
                     *FAST)
    assert result.returncode == 2 and "is an existing folder" in one_sentence(result.stderr)
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["results"]
    assert worker.log_path.read_text() == log_before  # the worker was not even asked for its info


def _truncated_strip_tiff(path: Path, keep: float) -> Path:
    """An uncompressed 320² RGB TIFF cut after ``keep`` of its bytes: the header and first rows read fine."""
    full = path.with_name("full_" + path.name)
    pixels = np.random.default_rng(5).integers(1, 256, (320, 320, 3), dtype=np.uint8)
    write_rgb(full, pixels)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path


def test_truncated_tiff_is_refused_at_open_or_mid_raster(worker, tmp_path):
    header_only = tmp_path / "header_only.tif"
    header_only.write_bytes(_truncated_strip_tiff(tmp_path / "t.tif", 1.0).read_bytes()[:100])
    result = run_cli(str(header_only), str(tmp_path / "a.tif"), "--connect", worker.endpoint, *FAST)
    assert result.returncode == 2 and "cannot open" in one_sentence(result.stderr)

    cut = _truncated_strip_tiff(tmp_path / "cut.tif", 0.6)
    log_before = len(worker.log_path.read_text())
    result = run_cli(str(cut), str(tmp_path / "b.tif"), "--connect", worker.endpoint, "--vector",
                     str(tmp_path / "b.gpkg"), *FAST)
    assert result.returncode == 2, result.stderr
    sentence = one_sentence(result.stderr)
    assert "cannot read" in sentence and "truncated" in sentence and "rows" in sentence
    events = [json.loads(line) for line in worker.log_path.read_text()[log_before:].splitlines()]
    assert any(e["event"] == "chunk_done" for e in events), "the first rows should have been segmented"
    assert any(e["event"] == "cancel" for e in events), "the worker was not told to drop the request"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "header_only.tif", "t.tif"]
    assert WorkerClient(worker.endpoint, timeout_s=10).status()["queued"] == 0


class SlowRun:
    """A CLI run slow enough to act on while its chunks are being computed."""

    def __init__(self, worker, scene: Path, *args: str, options: list[str] = SLOW) -> None:
        self.worker = worker
        self.offset = len(worker.log_path.read_text())
        self.process = subprocess.Popen([PYTHON, "-m", "worker.segment", str(scene), *args, "--connect",
                                         worker.endpoint, *options], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.worker.log_path.read_text()[self.offset:].splitlines()]

    def wait_for_first_chunk(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e["event"] == "chunk_done" for e in self.events()):
            assert self.process.poll() is None, self.process.communicate()
            assert time.monotonic() < deadline, "the worker never finished a chunk"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 180) -> tuple[int, str]:
        try:
            _, stderr = self.process.communicate(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return self.process.returncode, stderr


@pytest.mark.parametrize("signum, code, sentence", [
    (signal.SIGTERM, 128 + signal.SIGTERM, "terminated by SIGTERM; the worker was told to stop"),
    (signal.SIGINT, 130, "cancelled; the worker was told to stop"),
])
def test_a_signal_mid_run_cancels_the_request_on_the_worker_and_leaves_nothing(worker, scene, tmp_path, signum,
                                                                              code, sentence):
    output = tmp_path / "classes.tif"
    run = SlowRun(worker, scene, str(output), "--confidence", "--vector", str(tmp_path / "o.gpkg"))
    run.wait_for_first_chunk()
    assert partial_path(output).exists()
    run.process.send_signal(signum)
    returncode, stderr = run.finish(timeout_s=60)
    assert returncode == code
    assert sentence in one_sentence(stderr)
    assert list(tmp_path.iterdir()) == []
    cancels = [e for e in run.events() if e["event"] == "cancel"]
    assert cancels and cancels[0]["dropped"] + cancels[0]["running"] >= 1  # chunks were still queued or running
    with WorkerClient(worker.endpoint, timeout_s=10) as client:
        deadline = time.monotonic() + 10
        while (status := client.status()) and (status["queued"] or status["busy"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status["queued"] == 0 and not status["busy"], status
    done = [e for e in run.events() if e["event"] == "chunk_done"]
    assert len(done) < 6  # the abandoned chunks were not all computed
    time.sleep(1.0)
    assert len([e for e in run.events() if e["event"] == "chunk_done"]) == len(done)  # and nothing after


@pytest.mark.parametrize("failing", ["vector", "stats_json"])
def test_a_failure_after_the_raster_publishes_no_output(worker, small_scene, tmp_path, failing):
    output, vector, stats = tmp_path / "classes.tif", tmp_path / "objects.gpkg", tmp_path / "stats.json"
    output.write_bytes(b"the result of an earlier run")
    run = SlowRun(worker, small_scene, str(output), "--vector", str(vector), "--stats-json", str(stats),
                  options=MEDIUM)
    run.wait_for_first_chunk()
    # someone (another program) takes the temporary name while the raster is still being computed
    blocker = partial_path(vector if failing == "vector" else stats)
    blocker.mkdir()
    code, stderr = run.finish()
    assert code == 1, stderr
    assert "no output written" in one_sentence(stderr)
    assert sum(e["event"] == "chunk_done" for e in run.events()) == 2  # the raster was computed to the end
    assert output.read_bytes() == b"the result of an earlier run"  # untouched: only a commit replaces it
    assert not vector.exists() and not stats.exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([output.name, blocker.name])
