"""The one segmentation pipeline (``worker.io.pipeline``): a real worker, real GDAL files, outputs committed together.

The plugin's job and ``python -m worker.segment`` both run it; their own tests cover their faces (messages, exit
codes). Here: the sequence itself, its one handshake, and that a cancelled or refused run leaves no file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from worker_support import GT, CountingProxy, reference, start_worker

from worker.client import WorkerClient
from worker.client.protocol import SegmentationCancelled
from worker.io.pipeline import (
    SEGMENT_SHARE,
    BadClassTable,
    CancelledBeforeCommit,
    OptionsRefused,
    SegmentationRun,
    run_segmentation,
    worker_classes,
)

gdal.UseExceptions()
PIXELS = np.random.default_rng(11).integers(0, 256, (90, 130, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, tmp_path_factory):
    with start_worker(tiny_checkpoint, f"ipc://{tmp_path_factory.mktemp('pipeline')}/w.ipc") as w:
        yield w


def _run(folder: Path, **options) -> SegmentationRun:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)

    def read(y0: int, x0: int, y1: int, x1: int):
        return PIXELS[y0:y1, x0:x1], None

    defaults = {"patch": 64, "stride": 32, "chunk_size": 64}
    return SegmentationRun(width=130, height=90, geotransform=GT, crs_wkt=srs.ExportToWkt(), reader=read,
                           output=folder / "classes.tif", **{**defaults, **options})


def test_one_run_writes_every_output_after_one_handshake(worker, tiny_model, tmp_path: Path) -> None:
    run = _run(tmp_path, vector=tmp_path / "objects.gpkg", confidence=tmp_path / "chosen name.tif",
               stats_json=tmp_path / "run.json")
    fractions, messages, prepared = [], [], []
    run.prepare = lambda: prepared.append(True)
    with CountingProxy(worker.endpoint) as proxy, WorkerClient(proxy.endpoint, timeout_s=30) as client:
        result = run_segmentation(client, run, progress=fractions.append, log=messages.append)
    assert proxy.ops_before("segment") == ["open"]
    assert prepared == [True] and messages[0].startswith("Model ") and "Making polygons …" in messages
    assert fractions[-1] == 1.0 and max(fractions[:-1]) <= SEGMENT_SHARE + 1e-9
    ds = gdal.Open(str(run.output))  # held: a band outlives no dataset
    classes = ds.GetRasterBand(1).ReadAsArray()
    np.testing.assert_array_equal(classes, reference(tiny_model, PIXELS, 64, 32).argmax(0))
    confidence = gdal.Open(str(tmp_path / "chosen name.tif"))
    assert confidence.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert not (tmp_path / "classes_confidence.tif").exists()  # written under the chosen name, not beside
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["size"] == [90, 130] and summary["polygons"] == result.feature_count > 0
    assert sum(s["pixels"] for s in result.statistics) == 90 * 130
    assert {s["id"] for s in summary["classes"]} == {int(v) for v in np.unique(classes)}
    assert gdal.OpenEx(str(run.vector)).GetLayer(0).GetFeatureCount() == result.feature_count
    assert not list(tmp_path.glob(".*"))  # no partial file, no backup


@pytest.mark.parametrize("when", ["during the chunks", "before the commit"])
def test_a_cancelled_run_leaves_no_file(worker, tmp_path: Path, when: str) -> None:
    (tmp_path / "objects.gpkg").write_bytes(b"an earlier run's file")  # untouched: replaced only by a commit
    run = _run(tmp_path, vector=tmp_path / "objects.gpkg", confidence=tmp_path / "c.tif",
               stats_json=tmp_path / "run.json")
    cancel = []
    progress = (lambda fraction: cancel.append(True)) if when == "during the chunks" else None

    def log(message: str) -> None:
        if message.startswith("Making"):  # after the chunks, before the commit
            cancel.append(True)

    expected = CancelledBeforeCommit if when == "before the commit" else SegmentationCancelled
    with WorkerClient(worker.endpoint, timeout_s=30) as client, pytest.raises(expected) as raised:
        run_segmentation(client, run, progress=progress, log=log, is_cancelled=lambda: bool(cancel))
    assert when == "before the commit" or not isinstance(raised.value, CancelledBeforeCommit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.gpkg"]
    assert (tmp_path / "objects.gpkg").read_bytes() == b"an earlier run's file"


def test_options_the_worker_refuses_are_named_before_any_file(worker, tmp_path: Path) -> None:
    with WorkerClient(worker.endpoint, timeout_s=30) as client, pytest.raises(OptionsRefused) as refused:
        run_segmentation(client, _run(tmp_path, patch=100_000, vector=tmp_path / "v.gpkg"))
    assert refused.value.code == "too_large" and "'patch'" in refused.value.message
    assert not list(tmp_path.iterdir())


def test_a_reply_without_a_usable_class_table_is_one_sentence() -> None:
    assert worker_classes({"classes": [{"id": "1", "name": 2, "color": [1, 2, 3, 4]}]}, ["tcp://h:1"]) == [
        {"id": 1, "name": "2", "color": [1, 2, 3]}]
    with pytest.raises(BadClassTable, match="the worker at tcp://h:1 did not describe its classes"):
        worker_classes({"model": "x"}, ["tcp://h:1"])
    with pytest.raises(BadClassTable, match="malformed class table"):
        worker_classes({"classes": [{"id": 1}]}, ["tcp://h:1"])
