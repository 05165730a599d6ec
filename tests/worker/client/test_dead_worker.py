"""A dead worker fails the job within the heartbeat budget; a slow live one is not dead (real worker processes).

The job's pulse pings each worker on a connection of its own; the worker's socket thread answers even while its
model computes. Killed (kill -9) or frozen (SIGSTOP) mid-job, a worker answers nothing: the job fails with one
sentence, well within 60 s with the default 30 s budget, and the CLI leaves no output. A chunk that computes for
several budgets on a live worker completes without a retry.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from worker_support import PYTHON, REPO, free_tcp_endpoint, image, segment, start_worker, write_rgb

from worker.client import WorkerClient
from worker.client.pulse import DEAD_AFTER_S, WorkerLost

#: Patch and stride that make a chunk of 208² px compute for seconds on a CPU (hundreds of small windows).
SLOW = {"patch": 64, "stride": 8, "chunk_size": 208}


def wait_busy(endpoint: str, process: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Until the worker computes a chunk (asked through a client of its own)."""
    with WorkerClient(endpoint, timeout_s=10, retries=0) as observer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the client exited before its chunks ran: {process.communicate()}")
            if observer.status()["busy"]:
                return
            time.sleep(0.2)
    raise AssertionError("the worker never started computing")


def test_cli_fails_within_60_s_when_the_worker_is_killed_mid_job(tiny_checkpoint, tmp_path: Path) -> None:
    """kill -9 of the worker while its first chunk computes: the CLI exits with one sentence and no output."""
    source = write_rgb(tmp_path / "in.tif", image(3, 512, 512))
    out = tmp_path / "out"
    out.mkdir()
    worker = start_worker(tiny_checkpoint, free_tcp_endpoint())
    cli = None
    try:
        cli = subprocess.Popen(
            [PYTHON, "-m", "worker.segment", str(source), str(out / "classes.tif"), "--connect", worker.endpoint,
             "--vector", str(out / "objects.gpkg"), "--stats-json", str(out / "stats.json"), "--patch", "64",
             "--stride", "8", "--chunk-size", "256", "--quiet"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_busy(worker.endpoint, cli)
        worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = cli.communicate(timeout=120)
        failed_after = time.monotonic() - killed
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        worker.stop()
    assert failed_after < 60.0, f"the job hung {failed_after:.0f} s after its worker died"
    assert cli.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"stopped answering (no reply to pings for {DEAD_AFTER_S:g} s" in lines[0]
    assert lines[0].endswith("; no output written")
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(tmp_path)) == ["in.tif", "out"]


def test_a_frozen_worker_is_dead_too(tiny_checkpoint) -> None:
    """SIGSTOP: the process exists and its connections stay open, but nothing answers. The pulse (not the chunk
    timeout, far longer here) ends the job, with WorkerLost and the count of chunks done."""
    worker = start_worker(tiny_checkpoint, free_tcp_endpoint())
    try:
        with WorkerClient(worker.endpoint, timeout_s=600, dead_after_s=3) as client:
            img = image(4, 200, 416)

            def freeze_when_busy() -> None:
                wait_busy(worker.endpoint)
                worker.process.send_signal(signal.SIGSTOP)

            freezer = threading.Thread(target=freeze_when_busy, daemon=True)
            freezer.start()
            with pytest.raises(WorkerLost) as lost:
                segment(client, img, **SLOW)
            freezer.join(10)
    finally:
        worker.process.send_signal(signal.SIGCONT)
        worker.stop()
    message = str(lost.value)
    assert message.startswith(f"the worker at {worker.endpoint} stopped answering (no reply to pings for 3 s")
    assert message.endswith("of 2 chunks were done") and "\n" not in message


def test_a_long_chunk_on_a_live_worker_is_not_a_dead_worker(tiny_checkpoint, tiny_model) -> None:
    """One chunk computes for several heartbeat budgets: pings are answered meanwhile, so it completes, once."""
    from worker_support import reference

    img = image(31, 200, 200)
    worker = start_worker(tiny_checkpoint, free_tcp_endpoint())
    try:
        with WorkerClient(worker.endpoint, timeout_s=600, dead_after_s=2) as client:
            started = time.monotonic()
            out, _, stats, _ = segment(client, img, **SLOW)
            took = time.monotonic() - started
    finally:
        worker.stop()
    assert took > 3 * 2, f"the chunk took {took:.1f} s: too short to outlive the budget, the test proves nothing"
    assert stats["chunks"] == 1 and stats["retries"] == 0 and stats["resent"] == 0
    expected = reference(tiny_model, img, SLOW["patch"], SLOW["stride"]).argmax(0)
    assert (out == expected).mean() > 0.999  # the worker's answer (a near-tie may flip a pixel across builds)
    assert not (out == 77).any()  # every pixel written
