"""``python -m worker.segment`` opens a job with one round trip (``open``) before its first chunk.

Counted on the wire: the CLI talks to a real worker through a real ZeroMQ proxy that records every request.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from worker_support import ARGS, CountingProxy, run_cli, start_worker, write_rgb

gdal.UseExceptions()


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, tmp_path_factory):
    with start_worker(tiny_checkpoint, f"ipc://{tmp_path_factory.mktemp('handshake')}/w.ipc") as w:
        yield w


def test_the_cli_makes_one_round_trip_before_its_first_chunk(worker, tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(1, 256, (100, 120, 3), dtype=np.uint8)
    source, output = write_rgb(tmp_path / "in.tif", pixels), tmp_path / "out.tif"
    with CountingProxy(worker.endpoint) as proxy:
        result = run_cli(str(source), str(output), "--connect", proxy.endpoint, *ARGS, "--vector",
                         str(tmp_path / "objects.gpkg"))
    assert result.returncode == 0, result.stderr
    assert proxy.ops_before("segment") == ["open"], proxy.ops  # was info, plan, open before protocol 2
    assert proxy.ops.count("segment") >= 4 and "plan" not in proxy.ops  # 100×120 px in 64 px chunks
    assert gdal.Open(str(output)).RasterXSize == 120


def test_options_the_worker_refuses_cost_one_round_trip_and_are_a_usage_error(worker, tmp_path: Path) -> None:
    source = write_rgb(tmp_path / "in.tif", np.full((40, 40, 3), 9, np.uint8))
    with CountingProxy(worker.endpoint) as proxy:
        result = run_cli(str(source), str(tmp_path / "out.tif"), "--connect", proxy.endpoint, "--quiet",
                         "--patch", "64", "--stride", "32", "--chunk-size", "16")
    assert result.returncode == 2, result.stderr
    assert "the worker refuses these options: chunk_size 16 is smaller than the stride 32" in result.stderr
    assert proxy.ops == ["open"]
    assert not list(tmp_path.glob("*out*")) and not list(tmp_path.glob(".*partial*"))
