"""Real worker processes on real sockets: round trips, exactness, several workers, several clients, cancel."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from worker_support import free_tcp_endpoint, image, reference, segment, start_worker

from worker.client import LocalWorker, WorkerClient
from worker.client.protocol import PROTOCOL_VERSION, RemoteError, SegmentationCancelled


@pytest.fixture(scope="module")
def ipc_worker(tiny_checkpoint, tmp_path_factory):
    endpoint = f"ipc://{tmp_path_factory.mktemp('ipc')}/worker.ipc"
    with start_worker(tiny_checkpoint, endpoint) as worker:
        yield worker


@pytest.fixture(scope="module")
def tcp_worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--batch-size", "2") as worker:
        yield worker


def test_info_describes_the_loaded_model(ipc_worker: LocalWorker, tiny_model) -> None:
    from factseg_core.classes import classes_to_dicts

    with WorkerClient(ipc_worker.endpoint, timeout_s=10) as client:
        info = client.info()
        assert client.ping() < 1.0
        status = client.status()
    assert info["protocol"] == PROTOCOL_VERSION
    assert info["model"] == "FactSeg" and info["backbone"] == "resnet18"
    assert info["classes"] == classes_to_dicts(tiny_model.classes)
    assert (info["patch"], info["stride"], info["device"], info["backend"]) == (896, 512, "cpu", "torch")
    assert info["batch_size"] == 4 and info["chunk_size"] == 4096
    assert info["limits"]["max_header_bytes"] == 65536
    assert status == {"queued": 0, "busy": False, "time": pytest.approx(time.time(), abs=30)}


def test_ipc_round_trip_equals_sliding_predict(ipc_worker: LocalWorker, tiny_model) -> None:
    img = image(1)
    probs = reference(tiny_model, img)
    fractions: list[float] = []
    with WorkerClient(ipc_worker.endpoint, timeout_s=20) as client:
        out, conf, stats, calls = segment(client, img, confidence=True, progress=fractions.append)
    assert stats["chunks"] == len(calls) > 3  # really chunked
    np.testing.assert_array_equal(out, probs.argmax(0))
    np.testing.assert_allclose(conf, probs.max(0), atol=1e-5)
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    assert stats["retries"] == 0 and stats["bytes_sent"] > img.nbytes


def test_tcp_round_trip_with_default_chunking_is_one_chunk(tcp_worker: LocalWorker, tiny_model) -> None:
    img = image(2, 100, 120)
    with WorkerClient(tcp_worker.endpoint, timeout_s=20) as client:
        out, _, stats, _ = segment(client, img, chunk_size=None)
    assert stats["chunks"] == 1
    np.testing.assert_array_equal(out, reference(tiny_model, img).argmax(0))


def test_two_workers_serve_one_request_exactly(ipc_worker: LocalWorker, tcp_worker: LocalWorker, tiny_model) -> None:
    img = image(3)
    before = [_chunks_done(w) for w in (ipc_worker, tcp_worker)]
    with WorkerClient([ipc_worker.endpoint, tcp_worker.endpoint], timeout_s=20) as client:
        out, _, stats, _ = segment(client, img)
    shares = [a - b for a, b in zip([_chunks_done(w) for w in (ipc_worker, tcp_worker)], before)]
    # the same pixels as one worker gives (the ipc round trip test) and as the one-pass reference
    np.testing.assert_array_equal(out, reference(tiny_model, img).argmax(0))
    assert min(shares) > 0 and sum(shares) == stats["chunks"], shares  # both took part, nothing done twice


def _chunks_done(worker: LocalWorker) -> int:
    return worker.log_path.read_text().count('"event": "chunk_done"')


def test_concurrent_clients_get_their_own_answers(ipc_worker: LocalWorker, tcp_worker: LocalWorker,
                                                 tiny_model) -> None:
    images = [image(10 + i, 100 + 20 * i, 150 - 10 * i) for i in range(4)]
    expected = [reference(tiny_model, img).argmax(0) for img in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def job(i: int) -> None:
        endpoints = [ipc_worker.endpoint, tcp_worker.endpoint] if i % 2 else [ipc_worker.endpoint]
        try:
            with WorkerClient(endpoints, timeout_s=30) as client:
                results[i] = segment(client, images[i])[0]
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


def test_nodata_is_255_and_empty_chunks_are_not_sent(ipc_worker: LocalWorker, tiny_model) -> None:
    from factseg_core.engine import NODATA_FILL

    img = image(4)
    valid = np.ones(img.shape[:2], bool)
    valid[:, :128] = False  # the whole first column of chunks (2 of 4)
    valid[140:, 150:] = False  # part of the bottom-right chunk
    with WorkerClient(ipc_worker.endpoint, timeout_s=20) as client:
        out, conf, stats, _ = segment(client, img, valid, confidence=True)
    assert stats["chunks_skipped"] == 2
    assert (out[~valid] == 255).all() and (conf[~valid] == 0).all()
    painted = img.copy()
    painted[~valid] = NODATA_FILL
    want = reference(tiny_model, painted).argmax(0)
    np.testing.assert_array_equal(out[valid], want[valid])


def test_cancel_stops_the_work_on_the_worker(tcp_worker: LocalWorker) -> None:
    """One big chunk (hundreds of windows, seconds of work): cancel must stop it between batches."""
    img = image(5, 300, 300)
    fractions: list[float] = []
    started = time.monotonic()
    with WorkerClient(tcp_worker.endpoint, timeout_s=20) as client:
        with pytest.raises(SegmentationCancelled):
            segment(client, img, patch=64, stride=8, chunk_size=300, progress=fractions.append,
                    is_cancelled=lambda: time.monotonic() - started > 1.5)
        cancelled_at = time.monotonic()
        while client.status()["busy"] and time.monotonic() - cancelled_at < 10:
            time.sleep(0.05)
        idle_after = time.monotonic() - cancelled_at
    assert idle_after < 1.0, f"worker still busy {idle_after:.2f} s after cancel"
    assert '"event": "chunk_cancelled"' in tcp_worker.log_path.read_text()
    # progress events from inside the running chunk (its area is 296² of 300²) moved the bar before any reply
    assert any(0.0 < f < 0.9 for f in fractions), fractions


def test_fair_queue_round_robins_between_clients() -> None:
    from worker.server.service import FairQueue, Job

    def job(client: bytes, request: str, index: int) -> Job:
        return Job(client, [], "", request, index, (64, 64), (0, 0, 64, 64), (0, 0, 64, 64), 64, 32, False, False,
                   np.zeros((64, 64, 3), np.uint8), None)

    queue = FairQueue(max_per_client=3)
    for i in range(3):
        assert queue.push(job(b"a", "ra", i)) is None
    assert "already has 3 chunks" in queue.push(job(b"a", "ra", 3))  # per-client cap
    queue.push(job(b"b", "rb", 0))
    queue.push(job(b"c", "rc", 0))
    queue.push(job(b"c", "rc", 1))
    assert queue.contains((b"c", "rc", 1)) and not queue.contains((b"c", "rc", 2))
    order = [(j.identity, j.index) for j in iter(queue.pop, None)]
    assert order == [(b"a", 0), (b"b", 0), (b"c", 0), (b"a", 1), (b"c", 1), (b"a", 2)]
    for i in range(2):
        queue.push(job(b"a", "ra", i))
        queue.push(job(b"b", "rb", i))
    assert [j.index for j in queue.remove_request("ra")] == [0, 1]
    assert len(queue) == 2 and queue.bytes == 2 * 64 * 64 * 3
    assert {j.request for j in queue.drain()} == {"rb"} and len(queue) == 0 and queue.bytes == 0
    small = FairQueue(max_per_client=10, max_bytes=64 * 64 * 3 * 2)
    assert small.push(job(b"a", "r", 0)) is None and small.push(job(b"b", "r", 0)) is None
    assert "bytes of queued pixels" in small.push(job(b"c", "r", 0))  # memory bound, whoever asks
    small.pop()
    assert small.push(job(b"c", "r", 0)) is None


def test_open_plans_are_fast_and_bounded(tcp_worker: LocalWorker) -> None:
    with WorkerClient(tcp_worker.endpoint, timeout_s=30) as client:
        huge = client.open_job(200_000, 200_000, 896, 512, 2048).chunks  # 9,604 chunks, computed in milliseconds
        assert len(huge) == 98 * 98
        with pytest.raises(RemoteError, match="38416 chunks") as info:
            client.open_job(100_000, 100_000, 896, 512, 1023)  # chunk side rounds down to the stride: 512
        assert info.value.code == "too_large"
