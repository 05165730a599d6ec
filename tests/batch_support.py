"""Helpers of test_batch.py: small GeoTIFFs with a CRS, a real Dask cluster on loopback, running the batch CLI."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from osgeo import gdal

gdal.UseExceptions()
REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
DASK = str(REPO / ".venv" / "bin" / "dask")
#: Tiny windows so that a few small rasters make enough chunks for two workers.
PATCH, STRIDE = 64, 32


def write_scene(path: Path, seed: int, height: int, width: int, nodata_corner: bool = False) -> Path:
    """An 8-bit RGB GeoTIFF in UTM 33N (test_segment_cli's writer); optionally with a nodata (0) corner."""
    from worker_support import write_rgb

    pixels = np.random.default_rng(seed).integers(1, 256, (height, width, 3), dtype=np.uint8)
    if nodata_corner:
        pixels[height * 2 // 3 :, : width // 4] = 0
    return write_rgb(path, pixels, nodata=0 if nodata_corner else None)


def read_classes(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))  # kept alive while its band is read (GDAL's Python bindings need that)
    return ds.GetRasterBand(1).ReadAsArray()


def env() -> dict[str, str]:
    """Worker processes import the project from the repository; one torch thread each (as the ZeroMQ worker)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def batch_command(inputs: list[str], out_dir: Path, model: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "worker.batch", *inputs, "--out-dir", str(out_dir), "--model", str(model),
            "--patch", str(PATCH), "--stride", str(STRIDE), "--threads", "1", "--quiet", *extra]


def run_batch(inputs: list[str], out_dir: Path, model: Path, *extra: str, timeout: float = 120) -> dict:
    """Run ``python -m worker.batch`` to the end; returns its --stats-json (asserts exit code 0)."""
    stats = out_dir.parent / f"{out_dir.name}-stats.json"
    done = subprocess.run(batch_command(inputs, out_dir, model, "--stats-json", str(stats), *extra), cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(stats.read_text())


class DaskCluster:
    """A real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        # The HTTP server (health, metrics) runs even with --no-dashboard, on all interfaces unless told: loopback.
        self._spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)], "scheduler")
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.2)
        self.address = json.loads(self.scheduler_file.read_text())["address"]

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(command, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def add_worker(self, name: str) -> subprocess.Popen:
        """A worker without nanny: killing its process kills the worker (no restart behind our back)."""
        process = self._spawn([DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny",
                               "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1"], name)
        self.workers[name] = process
        return process

    def wait_for_workers(self, count: int, timeout: float = 90) -> list[str]:
        """Addresses of the workers once ``count`` have joined (read from the scheduler, through a client)."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(count, timeout=timeout)
            return sorted(client.scheduler_info()["workers"])

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # one grace period for all: a nanny may linger on a closed scheduler
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int) -> Iterator[DaskCluster]:
    cluster = DaskCluster(folder)
    try:
        for i in range(workers):
            cluster.add_worker(f"w{i}")
        cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.close()


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the batch ended (code {process.returncode}) before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
