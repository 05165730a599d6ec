"""Training over the wire, trusted like segmentation: no client path reaches the trainer, a job stays its
owner's, cancel frees the disk at once, declared sizes bind, idle uploads expire on the worker's own timer.

Real worker processes on loopback; the trainings are tiny (64-px patches, 3 iterations, one thread).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from train_support import begin, code_of, export_upload, job_folders, send, upload, wait_for
from worker_support import PYTHON, REPO, TINY_CONFIG, free_tcp_endpoint, make_export, start_worker

from worker.client import WorkerClient, start_local_worker
from worker.client import training_protocol as T
from worker.client.protocol import RemoteError
from worker.client.training_client import RemoteTraining

IDLE_S = 4


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, train_dir):
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--train-dir", str(train_dir),
                      "--train-upload-idle-s", str(IDLE_S)) as running:
        yield running


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "export")


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _start(client: WorkerClient, job: str, token: str) -> None:
    client.request(T.TrainStart(job=job, token=token))


def test_no_path_a_client_sends_reaches_the_trainer(worker, export, train_dir, tmp_path):
    outside = tmp_path / "outside"
    files = export_upload(export)
    before = _tree(export.parent)
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        for overrides in ({"data": {"cache_dir": str(outside)}}, {"data": {"train_split": "../../../x/train"}},
                          {"data": {"val_split": str(outside)}}, {"model": {"backbone": "/etc/passwd"}},
                          {"train": {"lr": "1e-3"}}, {"train": {"iters": True}}, {"paths": {"x": 1}}):
            assert code_of(lambda o=overrides: begin(client, files, overrides=o)) == "bad_config", overrides
        for preset in ("../configs/demo", "/etc/passwd", "nonexistent", "demo.yaml"):
            assert code_of(lambda p=preset: begin(client, files, preset=p)) == "bad_config", preset
        for text in (f"data: {{cache_dir: {outside}}}\n", "data: {train_split: '../../../x/train'}\n",
                     "!!python/object/apply:os.system ['touch /tmp/factseg-h18-pwned']\n", "- 1\n- 2\n"):
            job, token = upload(client, export_upload(export, text))
            assert code_of(lambda j=job, t=token: _start(client, j, t)) == "bad_config", text
            client.request(T.TrainCancel(job=job, token=token))
        assert job_folders(train_dir) == []  # every refused or cancelled job took its folder with it
    assert not outside.exists() and not Path("/tmp/factseg-h18-pwned").exists()
    assert _tree(export.parent) == before  # no cache or manifest beside the client's data


def test_a_job_stays_its_owners_and_its_result_waits_for_them(worker, export, train_dir, tmp_path):
    seen: list[dict] = []
    with WorkerClient(worker.endpoint, timeout_s=30) as alice, WorkerClient(worker.endpoint, timeout_s=30) as bob:
        job, token = upload(alice, export_upload(export, TINY_CONFIG), iterations=3)
        stolen = "f" * 32

        def bob_everywhere() -> set[str]:
            info = bob.info()
            assert info["training"] is not None and job not in json.dumps(info) and token not in json.dumps(info)
            piece = np.zeros(4, np.uint8)
            return {code_of(lambda: bob.request(T.TrainFile(job=job, token=stolen, name="val/images/x.png",
                                                               offset=0, size=4, data=piece))),
                    code_of(lambda: bob.request(T.TrainStart(job=job))),
                    code_of(lambda: bob.request(T.TrainStatus(job=job, token=stolen))),
                    code_of(lambda: bob.request(T.TrainResult(job=job, token=stolen))),
                    code_of(lambda: bob.request(T.TrainCancel(job=job, token=stolen)))}

        assert bob_everywhere() == {"not_owner"}
        assert code_of(lambda: begin(bob, [("classes.json", b"[]")])) == "busy_training"
        _start(alice, job, token)
        assert bob_everywhere() == {"not_owner"}
        done = wait_for(alice, job, token, ("done", "failed"), until=lambda s: seen.append(s) and False)
        assert done["state"] == "done", done
        assert bob_everywhere() == {"not_owner"}
        # the unfetched result is kept for its owner: a new job must wait
        assert code_of(lambda: begin(bob, [("classes.json", b"[]")])) == "busy_training"
        events = [json.loads(line) for line in next(train_dir.glob("*/run/events.jsonl")).read_text().splitlines()]
        training = RemoteTraining(alice)
        training.job, training.token = job, token
        training._download(tmp_path / "model.pt", lambda: False)
        training.cancel()  # the owner lets go: the folder goes at once
        assert job_folders(train_dir) == []
        assert code_of(lambda: alice.request(T.TrainStatus(job=job, token=token))) == "unknown_job"
        bob_job, bob_token = begin(bob, [("classes.json", b"[]")])
        bob.request(T.TrainCancel(job=bob_job, token=bob_token))
    from factseg_core import load_model

    assert load_model(tmp_path / "model.pt").config.num_classes == 4
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["iteration"] == 1 and progress[0]["eta_s"] is not None  # from the first iteration on
    assert progress[-1]["iteration"] == 3 and events[-1]["event"] == "done"
    assert [s["iteration"] for s in seen if "iteration" in s] == sorted(s["iteration"] for s in seen if "iteration" in s)


def test_on_a_curve_worker_the_job_belongs_to_the_client_key(tiny_checkpoint, tmp_path):
    from worker.client.keys import load_client_keys, load_public_key
    from worker.keys import generate

    keys = generate(tmp_path / "keys", ["alice", "bob"])
    server = load_public_key(keys["server_public"])
    endpoint = free_tcp_endpoint()
    started = start_local_worker(
        PYTHON, str(tiny_checkpoint), endpoint, device="cpu", pythonpath=str(REPO), ready_timeout_s=120,
        extra_args=["--threads", "1", "--train-dir", str(tmp_path / "jobs"), "--curve-secret-key",
                    str(keys["server_secret"]), "--curve-allowed-clients", str(keys["server_secret"].parent / "clients")],
        server_public_key=server, client_keys=load_client_keys(keys["alice_secret"]))
    with started, WorkerClient(endpoint, timeout_s=20, server_public_key=server,
                               client_keys=load_client_keys(keys["alice_secret"])) as alice, \
            WorkerClient(endpoint, timeout_s=20, server_public_key=server,
                         client_keys=load_client_keys(keys["bob_secret"])) as bob:
        files = [("classes.json", b"[1, 2, 3]")]
        job, token = begin(alice, files)
        # even with alice's job id and token, bob's key is not alice's
        assert code_of(lambda: bob.request(T.TrainStatus(job=job, token=token))) == "not_owner"
        assert code_of(lambda: send(bob, job, token, files)) == "not_owner"
        send(alice, job, token, files)
        assert alice.request(T.TrainStatus(job=job, token=token)).header["bytes"] == len(files[0][1])
        assert alice.request(T.TrainCancel(job=job, token=token)).header["state"] == "cancelled"


def test_cancel_deletes_the_upload_and_the_run_at_once(worker, export, train_dir):
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        job, token = upload(client, export_upload(export, TINY_CONFIG))
        assert len(job_folders(train_dir)) == 1
        client.request(T.TrainCancel(job=job, token=token))
        assert job_folders(train_dir) == []  # checked as soon as the reply is here
        job, token = upload(client, export_upload(export, TINY_CONFIG), iterations=100_000)
        _start(client, job, token)
        wait_for(client, job, token, ("failed", "done"), until=lambda s: s.get("iteration", 0) >= 1)
        assert client.request(T.TrainCancel(job=job, token=token)).header["state"] == "cancelled"
        assert job_folders(train_dir) == []
        assert client.request(T.TrainStatus(job=job, token=token)).header["state"] == "cancelled"


def test_the_first_declared_size_binds_and_short_files_are_named(worker, train_dir):
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        job, token = begin(client, [("classes.json", b"x" * 10), ("train/images/a.png", b"y" * 10)])

        def piece(name: str, offset: int, size: int, count: int = 5) -> str:
            data = np.full(count, 7, np.uint8)
            return code_of(lambda: client.request(T.TrainFile(job=job, token=token, name=name, offset=offset,
                                                              size=size, data=data)))

        assert piece("classes.json", 0, 10) == ""
        assert piece("classes.json", 5, 12) == "bad_file"  # the size changed between pieces
        assert piece("train/images/a.png", 0, 11) == "too_large"  # beyond the announced total
        assert piece("train/images/a.png", 0, 10, 10) == ""
        with pytest.raises(RemoteError) as short:
            _start(client, job, token)
        assert short.value.code == "bad_file" and "classes.json is incomplete: 5 of its 10 bytes" in short.value.message
        data = job_folders(train_dir)[0] / "data"
        assert (data / "classes.json").stat().st_size == 5
        client.request(T.TrainCancel(job=job, token=token))


def test_an_idle_upload_expires_on_a_timer_and_foreign_polls_do_not_renew_it(worker, train_dir):
    with WorkerClient(worker.endpoint, timeout_s=30) as alice, WorkerClient(worker.endpoint, timeout_s=30) as bob:
        files = [("classes.json", b"x" * 10)]
        job, token = begin(alice, files)
        assert len(job_folders(train_dir)) == 1
        deadline = time.monotonic() + IDLE_S + 3
        while time.monotonic() < deadline and job_folders(train_dir):
            assert code_of(lambda: bob.request(T.TrainStatus(job=job, token="0" * 32))) in ("not_owner", "unknown_job")
            time.sleep(0.5)
        assert job_folders(train_dir) == []
    # and with nobody asking at all: the worker's own timer
    with WorkerClient(worker.endpoint, timeout_s=30) as alice:
        job, token = begin(alice, files)
        assert len(job_folders(train_dir)) == 1
    time.sleep(IDLE_S + 2.5)
    assert job_folders(train_dir) == []


def test_a_broken_image_fails_the_job_with_a_one_sentence_cause(worker, export, train_dir):
    files = [(name, b"this is not a png" if name == "train/images/t0.png" else data)
             for name, data in export_upload(export, TINY_CONFIG)]
    with WorkerClient(worker.endpoint, timeout_s=30) as client:
        job, token = upload(client, files)
        _start(client, job, token)
        failed = wait_for(client, job, token, ("failed", "done"))
        assert failed["state"] == "failed" and failed["error_code"] == "input", failed
        error = failed["error"]
        assert error.startswith("cannot decode train/images/t0.png"), error
        assert "\n" not in error and "%|" not in error and str(train_dir) not in error
        client.request(T.TrainCancel(job=job, token=token))
    assert job_folders(train_dir) == []
