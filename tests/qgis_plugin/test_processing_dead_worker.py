"""factseg:segment through real Processing: a worker killed mid-job fails the run within 60 s, in one sentence,
with no output left (the plugin's client has the default 30 s heartbeat budget)."""
from __future__ import annotations

import signal
import threading
import time

import pytest
from plugin_support import UTM_GT, recording_feedback, scene, start_worker, write_geotiff
from qgis.core import QgsProcessingException

from worker.client import WorkerClient

pytestmark = pytest.mark.qgis


def kill_when_busy(worker, killed: list[float]) -> None:
    """kill -9 the worker as soon as it computes a chunk; records when."""
    with WorkerClient(worker.endpoint, timeout_s=10, retries=0) as observer:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not observer.status()["busy"]:
            time.sleep(0.2)
    worker.process.send_signal(signal.SIGKILL)
    killed.append(time.monotonic())


def test_a_worker_killed_mid_job_fails_the_run_within_60_s(provider, tiny_checkpoint, tmp_path):
    import processing

    source = write_geotiff(tmp_path / "scene.tif", scene(384, 384), UTM_GT, 32633)
    out = tmp_path / "out"
    out.mkdir()
    worker = start_worker(tiny_checkpoint)
    killed: list[float] = []
    killer = threading.Thread(target=kill_when_busy, args=(worker, killed), daemon=True)
    feedback = recording_feedback()()
    try:
        killer.start()
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("factseg:segment", {
                "INPUT": str(source), "WORKER": worker.endpoint, "PATCH": 64, "STRIDE": 8,
                "OUTPUT": str(out / "classes.tif"), "OUTPUT_VECTOR": str(out / "objects.gpkg"),
                "OUTPUT_CONFIDENCE": str(out / "confidence.tif")}, feedback=feedback)
        failed = time.monotonic()
        killer.join(10)
    finally:
        worker.stop()
    assert killed, "the worker was not killed mid-job (did the run end first?)"
    assert failed - killed[0] < 60.0, f"the run hung {failed - killed[0]:.0f} s after its worker died"
    messages = [str(raised.value), *feedback.errors]
    reason = [e for e in messages if "stopped answering" in e]
    assert reason and "\n" not in reason[0] and "Traceback" not in reason[0], messages
    assert reason[0].startswith(f"The FactSeg worker at {worker.endpoint} stopped answering (no reply to pings")
    assert reason[0].endswith("; no output was written.")
    assert list(out.iterdir()) == []
