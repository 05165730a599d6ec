"""``python -m worker.batch`` on a real Dask cluster (scheduler + worker processes on 127.0.0.1).

Every output is compared byte for byte with what ``python -m worker.segment`` writes through one real ZeroMQ
worker for the same patch and stride (at another chunk size): the class band, the grid, the CRS, the colour
table and the class names.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from batch_support import (
    PATCH,
    PYTHON,
    REPO,
    STRIDE,
    batch_command,
    dask_cluster,
    env,
    read_classes,
    run_batch,
    wait_for,
    write_scene,
)
from osgeo import gdal

from worker.batch.inputs import expand_inputs, plan_outputs
from worker.batch.journal import journal_path
from worker.client import start_local_worker
from worker.io.raster_source import InputError

pytestmark = pytest.mark.timeout(300)
SIZES = [(150, 190, True), (130, 100, False), (90, 160, False)]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    for i, (height, width, nodata) in enumerate(SIZES):
        write_scene(folder / f"scene{i}.tif", 10 + i, height, width, nodata)
    return folder


@pytest.fixture(scope="module")
def expected(scenes, tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """worker.segment's outputs through one ZeroMQ worker (one torch thread, like each Dask worker here)."""
    from worker import segment

    folder = tmp_path_factory.mktemp("zeromq")
    outputs = {}
    with start_local_worker(PYTHON, str(tiny_checkpoint), f"ipc://{folder}/w.ipc", device="cpu",
                            pythonpath=str(REPO), extra_args=["--threads", "1"]) as worker:
        for scene in sorted(scenes.glob("*.tif")):
            outputs[scene.stem] = folder / f"{scene.stem}.tif"
            code = segment.main([str(scene), str(outputs[scene.stem]), "--connect", worker.endpoint, "--patch",
                                 str(PATCH), "--stride", str(STRIDE), "--chunk-size", "96", "--quiet"])
            assert code == 0
    return outputs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("dask"), workers=2) as running:
        yield running


def assert_same_as_segment(out_dir: Path, expected: dict[str, Path]) -> None:
    for stem, reference in expected.items():
        ours, theirs = gdal.Open(str(out_dir / f"{stem}.tif")), gdal.Open(str(reference))
        assert ours.GetRasterBand(1).ReadAsArray().tobytes() == theirs.GetRasterBand(1).ReadAsArray().tobytes(), stem
        assert ours.GetGeoTransform() == theirs.GetGeoTransform()
        assert ours.GetProjection() == theirs.GetProjection() and "32633" in ours.GetProjection()
        band, other = ours.GetRasterBand(1), theirs.GetRasterBand(1)
        assert band.GetCategoryNames() == other.GetCategoryNames()
        assert band.GetNoDataValue() == other.GetNoDataValue() == 255
        table, other_table = band.GetRasterColorTable(), other.GetRasterColorTable()
        assert [table.GetColorEntry(i) for i in range(256)] == [other_table.GetColorEntry(i) for i in range(256)]
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []  # no partial left


def test_two_dask_workers_match_one_zeromq_worker_and_rerun_skips(cluster, scenes, expected, tiny_checkpoint,
                                                                   tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    stats = run_batch([str(scenes)], out_dir, tiny_checkpoint, "--scheduler", cluster.address, "--chunk-size", "64")
    assert [r["status"] for r in stats["rasters"]] == ["done"] * len(SIZES)
    assert len(stats["workers"]) == 2 and min(stats["workers"].values()) > 0, stats["workers"]
    assert sum(stats["workers"].values()) == sum(r["chunks"] for r in stats["rasters"])
    assert_same_as_segment(out_dir, expected)
    assert "FACTSEG_BATCH" in gdal.Open(str(out_dir / "scene0.tif")).GetMetadata()

    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out_dir.iterdir()}
    again = run_batch([str(scenes)], out_dir, tiny_checkpoint, "--scheduler", cluster.address, "--chunk-size", "32")
    assert [r["status"] for r in again["rasters"]] == ["skipped"] * len(SIZES)
    assert again["workers"] == {}
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out_dir.iterdir()} == before

    other = run_batch([str(scenes / "scene1.tif")], out_dir, tiny_checkpoint, "--scheduler", cluster.address,
                      "--stride", str(STRIDE // 2))  # other parameters: recomputed, not skipped
    assert other["rasters"][0]["status"] == "done" and other["rasters"][0]["computed"] > 0


def test_a_killed_dask_worker_costs_only_its_chunks(cluster, scenes, expected, tiny_checkpoint,
                                                   tmp_path: Path) -> None:
    victim = cluster.add_worker("victim")
    cluster.wait_for_workers(3)
    out_dir, stats_path = tmp_path / "out", tmp_path / "stats.json"
    batch = subprocess.Popen(batch_command([str(scenes)], out_dir, tiny_checkpoint, "--scheduler", cluster.address,
                                           "--chunk-size", "32", "--stats-json", str(stats_path)),
                             cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: journal_path(out_dir / "scene0.tif").exists(), 120, "the first chunks", batch)
        assert not (out_dir / "scene2.tif").exists()  # mid-run
        os.killpg(victim.pid, signal.SIGKILL)
        _, stderr = batch.communicate(timeout=180)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert batch.returncode == 0, stderr[-3000:]
    assert victim.poll() is not None
    stats = json.loads(stats_path.read_text())
    assert [r["status"] for r in stats["rasters"]] == ["done"] * len(SIZES)
    assert_same_as_segment(out_dir, expected)


def test_a_killed_client_resumes_with_only_the_missing_chunks(cluster, scenes, expected, tiny_checkpoint,
                                                             tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    journal = journal_path(out_dir / "scene0.tif")
    batch = subprocess.Popen(batch_command([str(scenes)], out_dir, tiny_checkpoint, "--scheduler", cluster.address,
                                           "--chunk-size", "32"), cwd=REPO, env=env(), stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: journal.exists() and json.loads(journal.read_text())["done"], 120, "a journal", batch)
        batch.send_signal(signal.SIGKILL)  # no chance to clean up: the journal on disk is all there is
        batch.wait(10)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert not (out_dir / "scene0.tif").exists()  # nothing unfinished looks finished
    journalled = len(json.loads(journal.read_text())["done"])
    stats = run_batch([str(scenes)], out_dir, tiny_checkpoint, "--scheduler", cluster.address, "--chunk-size", "32")
    first = stats["rasters"][0]
    assert first["resumed"] == journalled > 0
    assert first["computed"] == first["chunks"] - journalled
    assert_same_as_segment(out_dir, expected)


def test_local_workers_without_a_cluster(scenes, expected, tiny_checkpoint, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    stats = run_batch([str(scenes / "scene0.tif")], out_dir, tiny_checkpoint, "--local-workers", "2",
                      "--chunk-size", "64", "--confidence", "--vector")
    assert stats["rasters"][0]["status"] == "done"
    assert len(stats["workers"]) == 2
    ours = read_classes(out_dir / "scene0.tif")
    assert ours.tobytes() == read_classes(expected["scene0"]).tobytes()
    confidence = read_classes(out_dir / "scene0_confidence.tif")
    assert np.all(confidence[ours == 255] == -1) and np.all((confidence[ours != 255] > 0) & (confidence[ours != 255] <= 1))
    vector = gdal.OpenEx(str(out_dir / "scene0.gpkg"))
    assert vector.GetLayer(0).GetFeatureCount() > 0


# -- inputs and outputs (no cluster) --------------------------------------------------------------------------

def test_inputs_are_files_folders_lists_and_gdal_paths(scenes, tmp_path: Path) -> None:
    listing = tmp_path / "rasters.txt"
    listing.write_text(f"# scenes\n{scenes / 'scene1.tif'}\n\n/vsicurl/https://example.invalid/far/scene9.tif?x=1\n")
    found = expand_inputs([str(scenes / "scene2.tif"), str(scenes), str(listing)])
    assert found == [str(scenes / "scene2.tif"), str(scenes / "scene0.tif"), str(scenes / "scene1.tif"),
                     "/vsicurl/https://example.invalid/far/scene9.tif?x=1"]
    assert plan_outputs(found, tmp_path / "o", False, False)[-1] == tmp_path / "o" / "scene9.tif"
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.tif")])


def test_outputs_never_overwrite_inputs_nor_foreign_files(scenes, tiny_checkpoint, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="would overwrite the input"):
        plan_outputs([str(scenes / "scene0.tif")], scenes, False, False)
    twin = tmp_path / "twin"
    twin.mkdir()
    write_scene(twin / "scene0.tif", 1, 40, 40)
    with pytest.raises(InputError, match="both be written"):
        plan_outputs([str(scenes / "scene0.tif"), str(twin / "scene0.tif")], tmp_path / "o", False, False)
    done = subprocess.run(batch_command([str(scenes / "scene0.tif")], scenes, tiny_checkpoint), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "would overwrite the input" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_not_written_by_batch_is_never_replaced(scenes, tmp_path: Path) -> None:
    from worker.batch.run import BatchOptions, prepare_job

    foreign = write_scene(tmp_path / "scene0.tif", 3, 40, 40)
    before = foreign.read_bytes()
    options = BatchOptions("tiny.pt", "0" * 64, "torch", PATCH, STRIDE, 64, 4, False, False, False, None)
    job = prepare_job(0, str(scenes / "scene0.tif"), foreign, options)
    assert job.status == "failed" and "not written by worker.batch" in job.message
    assert foreign.read_bytes() == before


def test_an_unreadable_partial_file_is_recomputed_not_trusted(tmp_path: Path) -> None:
    from worker.batch.journal import RunRecord
    from worker.batch.output import RasterGrid, RasterOutput
    from worker.engine import chunk_plan
    from worker.io.raster_output import partial_path

    classes = [{"id": 0, "name": "background", "color": [0, 0, 0]}, {"id": 1, "name": "ship", "color": [255, 0, 0]}]
    grid = RasterGrid(96, 128, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "")
    record = RunRecord("ab" * 32, "m.pt", "torch", PATCH, STRIDE, (1, 2, 3), False, False, (96, 128))
    chunks = chunk_plan(96, 128, PATCH, STRIDE, 32)
    final = tmp_path / "x.tif"

    def block(chunk) -> np.ndarray:
        y0, x0, y1, x1 = chunk.out
        return np.full((y1 - y0, x1 - x0), chunk.index % 2, np.uint8)

    first = RasterOutput(final, grid, classes, record, 32, chunks)
    first.open()
    for chunk in chunks[:5]:
        first.write(chunk, block(chunk), None)
    first.checkpoint()
    del first  # as if killed after the checkpoint
    again = RasterOutput(final, grid, classes, record, 32, chunks)
    again.open()
    assert again.resumed == 5 and again.done == {c.index for c in chunks[:5]}
    for chunk in chunks[5:]:
        again.write(chunk, block(chunk), None)
    again.commit()
    written = read_classes(final)
    for chunk in chunks:
        y0, x0, y1, x1 = chunk.out
        assert (written[y0:y1, x0:x1] == chunk.index % 2).all()

    broken = RasterOutput(tmp_path / "y.tif", grid, classes, record, 32, chunks)
    broken.open()
    broken.write(chunks[0], block(chunks[0]), None)
    broken.checkpoint()
    del broken
    partial_path(tmp_path / "y.tif").write_bytes(b"not a tiff")
    fresh = RasterOutput(tmp_path / "y.tif", grid, classes, record, 32, chunks)
    fresh.open()
    assert fresh.resumed == 0 and fresh.done == set()


@pytest.mark.cuda
def test_local_cuda_workers_write_complete_outputs(scenes, tiny_checkpoint, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    stats = run_batch([str(scenes)], tmp_path / "out", tiny_checkpoint, "--device", "cuda", "--local-workers",
                      str(torch.cuda.device_count()))
    assert [r["status"] for r in stats["rasters"]] == ["done"] * len(SIZES) and stats["device"] == "cuda"
