"""Fine-tuning on a real worker process over ZeroMQ: upload an export, train, fetch a loadable model, cancel.

The training runs for real (``python -m training.train`` as the worker's child process) on a tiny export with
three user classes; each test stays small (64-px patches, a handful of iterations, one thread).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from worker_support import TINY_CONFIG, free_tcp_endpoint, make_export, start_worker

from worker.client import WorkerClient
from worker.client import training_protocol as T
from worker.client.protocol import RemoteError
from worker.client.training_client import RemoteTraining, TrainingCancelled, TrainingProgress, export_files


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint()) as running:
        yield running


@pytest.fixture()
def export(tmp_path):
    return make_export(tmp_path / "export")


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def test_fine_tune_on_worker_returns_loadable_model(worker, export, config, tmp_path):
    from factseg_core import load_model

    seen: list[TrainingProgress] = []
    output = tmp_path / "model.pt"
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        outcome = RemoteTraining(client).run(export, output, iterations=3, config=config, progress=seen.append)
    assert outcome.model_path == output and output.is_file()
    assert not list(tmp_path.glob(".*partial*"))
    model = load_model(output)
    names = [c.name for c in model.classes] if hasattr(model, "classes") else None
    assert model.config.num_classes == 4
    if names is not None:
        assert names == ["background", "tank", "vehicle", "vessel"]
    assert any(p.state == "running" for p in seen) and seen[-1].state == "done"
    assert seen[-1].iteration == 3 and seen[-1].loss is not None
    assert outcome.classes[1]["name"] == "tank"


def test_cancel_stops_training_and_leaves_no_model(worker, export, config, tmp_path):
    output = tmp_path / "model.pt"
    started = []

    def cancel_when_running() -> bool:
        return bool(started)

    def on_progress(progress: TrainingProgress) -> None:
        if progress.state == "running":
            started.append(progress)

    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        with pytest.raises(TrainingCancelled):
            RemoteTraining(client).run(export, output, iterations=10_000, config=config, progress=on_progress,
                                       is_cancelled=cancel_when_running)
        assert not output.exists() and not list(tmp_path.glob(".*partial*"))
        state = client.info()["training"]
        assert state is None or state["state"] == "cancelled"


def test_segment_during_training_gets_a_clear_answer(worker, export, config, tmp_path):
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        training = RemoteTraining(client)
        files = export_files(export) + [("config.yaml", config)]
        reply = client.request(T.TrainBegin(files=len(files), bytes=sum(p.stat().st_size for _, p in files),
                                            iterations=10_000)).header
        training.job, training.token = reply["job"], reply["token"]
        training._upload(files, reply["piece_bytes"], lambda: False)
        client.request(T.TrainStart(job=training.job, token=training.token))
        try:
            with pytest.raises(RemoteError) as refused:
                client.open_job(64, 64, 64, 32, 64)
            assert refused.value.code == "busy_training" and "busy training" in refused.value.message
            with pytest.raises(RemoteError) as second:
                client.request(T.TrainBegin(files=1, bytes=1, iterations=1))
            assert second.value.code == "busy_training"
        finally:
            training.cancel()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.open_job(64, 64, 64, 32, 64)
                break
            except RemoteError:
                time.sleep(0.2)
        assert client.open_job(64, 64, 64, 32, 64).chunks


@pytest.mark.parametrize("name, code", [
    ("../escape.png", "bad_file"),
    ("train/images/../../x.png", "bad_file"),
    ("/etc/passwd", "bad_file"),
    ("train/images/a.exe", "bad_file"),
])
def test_hostile_uploads_are_refused(worker, name, code):
    with WorkerClient(worker.endpoint, timeout_s=10) as client:
        begun = client.request(T.TrainBegin(files=2, bytes=10, iterations=1)).header
        job, token = begun["job"], begun["token"]
        with pytest.raises(RemoteError) as refused:
            client.request(T.TrainFile(job=job, token=token, name=name, offset=0, size=4, data=np.zeros(4, np.uint8)))
        assert refused.value.code == code
        with pytest.raises(RemoteError) as too_much:
            client.request(T.TrainFile(job=job, token=token, name="classes.json", offset=0, size=100,
                                       data=np.zeros(100, np.uint8)))
        assert too_much.value.code == "too_large"
        with pytest.raises(RemoteError) as early:
            client.request(T.TrainStart(job=job, token=token))
        assert early.value.code == "bad_file"
        with pytest.raises(RemoteError) as unknown:
            client.request(T.TrainStatus(job="0" * 32))
        assert unknown.value.code == "unknown_job"
        with pytest.raises(RemoteError) as malformed:
            client.request(T.TrainStatus(job="../../etc"))
        assert malformed.value.code == "bad_header"
        client.request(T.TrainCancel(job=job, token=token))
        assert client.info()["classes"]  # still serving


def test_export_files_follow_the_layout(export):
    names = [name for name, _ in export_files(export)]
    assert names[0] == "classes.json"
    assert all(n.startswith(("train/", "val/")) for n in names[1:])
    assert json.loads((export / "classes.json").read_text())[0]["name"] == "background"
