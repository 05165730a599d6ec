"""Training jobs when the machine misbehaves: a worker killed with -9 leaves no training process and no folder
for long, and a full disk is answered ``no_space`` with files exactly as long as acknowledged."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from train_support import (
    alive,
    begin,
    children,
    code_of,
    export_upload,
    job_folders,
    mount_tmpfs,
    unmount,
    upload,
    wait_for,
)
from worker_support import TINY_CONFIG, free_tcp_endpoint, make_export, start_worker

from worker.client import WorkerClient
from worker.client import training_protocol as T
from worker.server.training_jobs import JobFolder

MIB = 1024 * 1024


def test_kill_9_takes_the_training_along_and_a_new_worker_sweeps_only_dead_folders(tiny_checkpoint, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    live = JobFolder(jobs)  # held by this process: a live worker's folder
    foreign = jobs / "factseg-train-not-ours"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("a user's file")
    export = make_export(tmp_path / "export")
    first = start_worker(tiny_checkpoint, free_tcp_endpoint(), "--train-dir", str(jobs))
    try:
        with WorkerClient(first.endpoint, timeout_s=30) as client:
            job, token = upload(client, export_upload(export, TINY_CONFIG), iterations=100_000)
            client.request(T.TrainStart(job=job, token=token))
            wait_for(client, job, token, ("failed", "done"), until=lambda s: s.get("iteration", 0) >= 1)
        trainers = children(first.process.pid)
        assert trainers, "the training process was not found"
        dead = [f for f in job_folders(jobs) if f not in (live.path, foreign)]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in trainers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in trainers), "the training outlived its worker"
        assert len(dead) == 1 and dead[0].is_dir()
    finally:
        first.stop()
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--train-dir", str(jobs)):
        assert not dead[0].exists()
        assert live.path.is_dir() and (live.path / "owner.lock").is_file()
        assert (foreign / "keep.txt").read_text() == "a user's file"
    live.remove()


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "300m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights): no full disk to test on")
    yield disk
    unmount(disk)


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, shutil.disk_usage(disk).free - leave)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_no_space_and_a_resend_gives_the_source_bytes(tiny_checkpoint, small_disk, tmp_path):
    source = np.random.default_rng(3).integers(0, 256, 6 * MIB, dtype=np.uint8)
    name = "train/images/big.png"
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--train-dir", str(small_disk)) as worker, \
            WorkerClient(worker.endpoint, timeout_s=30) as client:
        too_big = [("classes.json", b"x" * shutil.disk_usage(small_disk).free)]
        assert code_of(lambda: begin(client, too_big)) == "no_space"
        job, token = begin(client, [(name, source.tobytes())])
        target = job_folders(small_disk)[0] / "data" / name

        def piece(offset: int) -> str:
            data = source[offset:offset + T.PIECE_BYTES]
            return code_of(lambda: client.request(T.TrainFile(job=job, token=token, name=name, offset=offset,
                                                              size=source.size, data=data)))

        filler = _fill(small_disk, 5 * MIB)  # the first 4 MiB piece fits, the second does not
        assert piece(0) == ""
        assert piece(T.PIECE_BYTES) == "no_space"
        assert target.stat().st_size == T.PIECE_BYTES  # exactly what was acknowledged
        assert piece(T.PIECE_BYTES) == "no_space"  # a resend on a still-full disk changes nothing
        assert target.stat().st_size == T.PIECE_BYTES
        filler.unlink()
        assert piece(T.PIECE_BYTES) == ""
        assert target.read_bytes() == source.tobytes()
        client.request(T.TrainCancel(job=job, token=token))
        # a training that meets a full disk says so
        job, token = upload(client, export_upload(make_export(tmp_path / "export"), TINY_CONFIG))
        filler = _fill(small_disk, 64 * 1024)
        client.request(T.TrainStart(job=job, token=token))
        failed = wait_for(client, job, token, ("failed", "done"))
        assert failed["state"] == "failed" and failed["error_code"] == "no_space", failed
        assert "disk is full" in failed["error"]
        client.request(T.TrainCancel(job=job, token=token))
        filler.unlink()
