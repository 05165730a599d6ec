"""Faults: hostile or broken messages, workers killed with -9, and clean shutdown on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_support import free_tcp_endpoint, image, reference, segment_header, start_worker

from worker.client import WorkerClient
from worker.client import protocol as P
from worker.client.protocol import WorkerUnavailable

MAX_MB = 1  # the fuzzed worker accepts array frames up to 1 MiB, so "too big" is cheap to send


@pytest.fixture(scope="module")
def fuzz_worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--max-message-mb", str(MAX_MB)) as worker:
        yield worker


@pytest.fixture(scope="module")
def raw(fuzz_worker):
    """A bare DEALER on the fuzzed worker: sends any frames, returns the decoded reply (or None)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fuzz_worker.endpoint)

    def exchange(frames: list[bytes], timeout_s: float = 10.0) -> P.Message | None:
        sock.send_multipart(frames)
        if not sock.poll(timeout_s * 1000):
            return None
        reply = sock.recv_multipart()
        if len(reply) > 1 and not reply[0]:  # we sent a REQ-style empty delimiter first: it comes back
            reply = reply[1:]
        return P.decode(reply, reply=True)

    yield exchange
    sock.close()
    ctx.term()


def _assert_error(reply: P.Message | None, code: str | None = None, text: str = "") -> None:
    assert reply is not None, "the worker did not answer"
    assert reply.header["status"] == "error", reply.header
    assert reply.header["code"] in P.ERROR_CODES
    assert reply.header["message"]
    if code is not None:
        assert reply.header["code"] == code, reply.header
    assert text in reply.header["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
segment_mutations = st.sampled_from([
    {"v": 0}, {"v": "2"}, {"op": "segmentx"}, {"index": -1}, {"index": 5}, {"index": True},
    {"image_size": [64]}, {"image_size": [0, 64]}, {"image_size": [10**9, 64]}, {"src": [0, 0, 64]},
    {"src": [0, 0, 32, 64]}, {"out": [10, 10, 5, 5]}, {"patch": 16}, {"stride": 200}, {"chunk_size": 0},
    {"request": ""}, {"request": 5}, {"confidence": "yes"}, {"id": 7},
    {"arrays": [{"name": "pixels", "dtype": "uint8", "shape": [64, 64, 4]}]},
    {"arrays": [{"name": "pixels", "dtype": "float32", "shape": [64, 64, 3]}]},
    {"arrays": [{"name": "pixels", "dtype": "int64", "shape": [64, 64, 3]}]},
    {"arrays": [{"name": "weights", "dtype": "uint8", "shape": [64, 64, 3]}]},
    {"arrays": []},
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["bytes", "json", "segment"]),
    frames=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    header=st.dictionaries(st.sampled_from(["v", "op", "id", "arrays", "request", "height", "width", "x"]),
                           json_values, max_size=6),
    mutation=segment_mutations,
    extra_frames=st.integers(0, 2),
)
def test_fuzzed_messages_get_error_replies_and_the_worker_keeps_serving(raw, kind, frames, header, mutation,
                                                                       extra_frames) -> None:
    if kind == "bytes":
        message = frames
    elif kind == "json":
        message = [json.dumps(header).encode(), *frames[:extra_frames]]
    else:
        pixels = bytes(64 * 64 * 3)
        message = [json.dumps(segment_header(**mutation)).encode(), pixels, *frames[:extra_frames]]
    reply = raw(message)
    assert reply is not None, f"no reply to {str(message)[:200]}"
    if reply.header.get("status") != "ok":  # a random header can be a valid info/ping/open; anything else errs
        _assert_error(reply)
    pong = raw(P.encode({"op": "ping", "id": "p"}))
    assert pong is not None and pong.header["status"] == "ok"


def test_each_limit_is_named_in_the_reply(raw) -> None:
    _assert_error(raw([json.dumps({"v": 2, "op": "ping", "pad": "x" * 70_000}).encode()]), "header_too_large")
    _assert_error(raw([b'{"v": 9, "op": "info"}']), "unsupported_version", "version 9")
    _assert_error(raw([b'{"v": 2, "op": "eval"}']), "unknown_op", "eval")
    _assert_error(raw([b'{"v": 2, "op": "plan", "height": 64, "width": 64}']), "unknown_op", "plan")  # gone in v2
    _assert_error(raw([b'{"v": 1, "op": "info"}']), "unsupported_version", "speaks version 2")
    too_big = segment_header(arrays=[{"name": "pixels", "dtype": "uint8", "shape": [1024, 1024, 3]}])
    _assert_error(raw([json.dumps(too_big).encode(), b""]), "too_large", "limit is")
    bad_chunk = segment_header(src=[0, 0, 64, 32], out=[0, 0, 64, 32],
                                arrays=[{"name": "pixels", "dtype": "uint8", "shape": [64, 32, 3]}])
    _assert_error(raw([json.dumps(bad_chunk).encode(), bytes(64 * 32 * 3)]), "bad_chunk", "worker's plan")
    plan = {"v": 2, "op": "open", "height": 10**6, "width": 10**6, "patch": 64, "stride": 32, "chunk_size": 64}
    _assert_error(raw([json.dumps(plan).encode()]), "too_large", "chunks")


def test_a_frame_beyond_zmq_maxmsgsize_drops_that_peer_only(fuzz_worker, raw) -> None:
    ctx = zmq.Context()
    try:
        bully = ctx.socket(zmq.DEALER)
        bully.setsockopt(zmq.LINGER, 0)
        bully.connect(fuzz_worker.endpoint)
        bully.send_multipart([json.dumps(segment_header()).encode(), bytes(3 * 2**20)])
        assert not bully.poll(1000)  # libzmq closed the connection before the message was assembled
        bully.close()
    finally:
        ctx.term()
    pong = raw(P.encode({"op": "ping", "id": "after"}))
    assert pong is not None and pong.header["status"] == "ok"
    assert fuzz_worker.process.poll() is None


def test_req_socket_clients_are_served_too(fuzz_worker) -> None:
    """A plain REQ client (empty delimiter frame) gets its reply with the envelope it sent."""
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(fuzz_worker.endpoint)
        req.send_multipart(P.encode({"op": "ping", "id": "req"}))
        assert req.poll(10_000)
        assert P.decode(req.recv_multipart(), reply=True).header["status"] == "ok"
        req.close()
    finally:
        ctx.term()


# -- kill -9 -----------------------------------------------------------------------------------------------


def test_kill_9_fails_over_to_a_restarted_worker(tiny_checkpoint, tiny_model) -> None:
    endpoint = free_tcp_endpoint()
    first = start_worker(tiny_checkpoint, endpoint)
    replacement: list = []
    reads = []
    img = image(21, 128, 160)
    restarter = threading.Thread(target=lambda: replacement.append(start_worker(tiny_checkpoint, endpoint)))

    def reader(y0, x0, y1, x1):
        reads.append((y0, x0))
        if len(reads) == 3:  # two chunks are in flight: kill the worker under them, start a new one
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
            restarter.start()
        return img[y0:y1, x0:x1], None

    out = np.zeros(img.shape[:2], np.uint8)

    def writer(y0, x0, classes, confidence):
        out[y0 : y0 + classes.shape[0], x0 : x0 + classes.shape[1]] = classes

    try:
        with WorkerClient(endpoint, timeout_s=4, retries=8) as client:
            stats = client.segment_raster(*img.shape[:2], reader, writer, patch=64, stride=32, chunk_size=64)
    finally:
        first.stop()
        if restarter.is_alive() or restarter.ident is not None:
            restarter.join(120)
        for worker in replacement:
            worker.stop()
    assert stats["retries"] >= 1 and stats["resent"] >= 1
    np.testing.assert_array_equal(out, reference(tiny_model, img, 64, 32).argmax(0))


def test_kill_9_fails_over_to_another_endpoint(tiny_checkpoint, tiny_model) -> None:
    doomed, survivor = (start_worker(tiny_checkpoint, free_tcp_endpoint()) for _ in range(2))
    img = image(22, 128, 160)
    reads = []

    def reader(y0, x0, y1, x1):
        reads.append((y0, x0))
        if len(reads) == 4:  # chunks 0 and 2 went to the doomed worker (round robin)
            doomed.process.kill()
        return img[y0:y1, x0:x1], None

    out = np.zeros(img.shape[:2], np.uint8)

    def writer(y0, x0, classes, confidence):
        out[y0 : y0 + classes.shape[0], x0 : x0 + classes.shape[1]] = classes

    try:
        with WorkerClient([doomed.endpoint, survivor.endpoint], timeout_s=3, retries=2) as client:
            stats = client.segment_raster(*img.shape[:2], reader, writer, patch=64, stride=32, chunk_size=64)
    finally:
        doomed.stop()
        survivor.stop()
    np.testing.assert_array_equal(out, reference(tiny_model, img, 64, 32).argmax(0))
    assert stats["chunks"] == 6


def test_kill_9_without_replacement_raises_within_the_timeout(tiny_checkpoint) -> None:
    worker = start_worker(tiny_checkpoint, free_tcp_endpoint())
    img = image(23, 128, 160)
    reads = []

    def reader(y0, x0, y1, x1):
        reads.append(1)
        if len(reads) == 2:
            worker.process.kill()
        return img[y0:y1, x0:x1], None

    timeout_s, retries = 1.5, 2
    started = time.monotonic()
    try:
        with WorkerClient(worker.endpoint, timeout_s=timeout_s, retries=retries) as client:
            with pytest.raises(WorkerUnavailable, match="no answer for chunk .* within 1.5 s, 2 reconnections"):
                client.segment_raster(*img.shape[:2], reader, lambda *a: None, patch=64, stride=32, chunk_size=64)
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    assert elapsed < timeout_s * (retries + 1) + 3.0, elapsed


# -- clean shutdown ------------------------------------------------------------------------------------------


def test_sigterm_answers_the_running_chunk_and_removes_the_ipc_file(tiny_checkpoint, tmp_path: Path) -> None:
    ipc = tmp_path / "w.ipc"
    worker = start_worker(tiny_checkpoint, f"ipc://{ipc}")
    assert ipc.exists()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.endpoint)
    try:
        # one long chunk (961 windows of 64 px) and one queued behind it
        header = {"op": "segment", "id": "long", "request": "r", "index": 0, "image_size": [300, 300],
                  "src": [0, 0, 300, 300], "out": [0, 0, 300, 300], "patch": 64, "stride": 8, "chunk_size": 304}
        pixels = image(24, 300, 300)
        sock.send_multipart(P.encode(header, {"pixels": pixels}))
        sock.send_multipart(P.encode({**header, "id": "queued", "request": "r2"}, {"pixels": pixels}))
        beat = P.decode(sock.recv_multipart(), reply=True)  # a heartbeat or progress event: the chunk is running
        assert beat.header.get("request") == "r" or "r" in beat.header.get("pending", {}), beat.header
        os.kill(worker.process.pid, signal.SIGTERM)
        replies = {}
        deadline = time.monotonic() + 15
        while len(replies) < 2 and time.monotonic() < deadline:
            if sock.poll(1000):
                msg = P.decode(sock.recv_multipart(), reply=True)
                if msg.header.get("op") == "segment":
                    replies[msg.header["id"]] = msg.header
        assert worker.process.wait(15) == 0
        log_text = worker.log_path.read_text()
    finally:
        sock.close()
        ctx.term()
        worker.stop()
    assert {r["code"] for r in replies.values()} == {"shutdown"}, replies
    assert not ipc.exists()
    assert '"event": "stopped"' in log_text


def test_a_local_worker_stops_when_its_parent_dies(tiny_checkpoint, tmp_path: Path) -> None:
    """QGIS crashing must not leave a worker holding the GPU: ``--exit-with-parent`` (set by start_local_worker)."""
    import subprocess
    import sys

    from worker_support import PYTHON, REPO

    ipc = tmp_path / "orphan.ipc"
    command = [PYTHON, "-m", "worker", "--bind", f"ipc://{ipc}", "--model", str(tiny_checkpoint), "--threads", "1",
               "--exit-with-parent"]
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, time; subprocess.Popen({command!r}); time.sleep(600)"], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while not ipc.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ipc.exists(), "the worker did not start"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while ipc.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ipc.exists(), "the orphaned worker is still serving"
