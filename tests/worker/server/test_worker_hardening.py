"""Hardening (issue 10) on real worker processes: bounded receives, specific codes, strict numbers, bounded
logs, leases that drop a vanished client's work, client-side limits, the one-round-trip handshake, a fuzzer."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from worker_support import PYTHON, REPO, free_tcp_endpoint, image, segment, start_worker
from worker_support import segment_header as _segment

from worker.client import WorkerClient
from worker.client import protocol as P
from worker.client.protocol import WorkerError

MAX_MB = 1  # array frames up to 1 MiB: "too big" is cheap to send


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--max-message-mb", str(MAX_MB)) as started:
        yield started


class Raw:
    """A bare DEALER: sends any frames, collects decoded replies."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def replies(self, count: int, timeout_s: float = 20.0) -> list[P.Message]:
        got: list[P.Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and self.sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
            frames = self.sock.recv_multipart()
            if len(frames) > 1 and not frames[0]:
                frames = frames[1:]
            message = P.decode(frames, reply=True)
            if message.header.get("op") != "heartbeat":
                got.append(message)
        return got

    def exchange(self, frames: list[bytes]) -> P.Message:
        self.send(frames)
        replies = self.replies(1)
        assert replies, f"no reply to {str(frames)[:200]}"
        return replies[0]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def raw(worker):
    client = Raw(worker.endpoint)
    yield client
    client.close()


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def fake_worker(answer):
    """A ROUTER on loopback that answers each message with ``answer(body_frames) -> frames``; yields its endpoint."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(100):
                identity, *body = router.recv_multipart()
                router.send_multipart([identity, *answer(body)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        router.close(linger=0)
        ctx.term()


def _code(reply: P.Message) -> str:
    assert reply.header["status"] == "error", reply.header
    assert reply.header["code"] in P.ERROR_CODES
    return reply.header["code"]


def _ping() -> list[bytes]:
    return [bytes(f) for f in P.PingRequest(id="ping").frames()]


# -- bounded receives ---------------------------------------------------------------------------------------


def test_many_frame_messages_leave_the_worker_rss_within_a_few_mb(worker, raw) -> None:
    header = json.dumps({"v": 2, "op": "ping", "id": "many"}).encode()
    frame = bytes(MAX_MB * 2**20 - 64)  # each frame just under the frame limit: libzmq lets it through
    assert raw.exchange(_ping()).header["status"] == "ok"
    before = rss_bytes(worker.process.pid)
    for _ in range(3):
        reply = raw.exchange([header, *[frame] * 150])  # 150 MB in one message
        assert _code(reply) == "message_too_large" and "discarded" in reply.header["message"]
        assert reply.header["id"] == "many"
    reply = raw.exchange([header, *[b"x" * 1000] * 300])  # small frames, too many of them
    assert _code(reply) == "too_many_frames" and reply.header["id"] == "many"
    time.sleep(0.2)
    grown = rss_bytes(worker.process.pid) - before
    assert grown < 8 * 2**20, f"the worker grew by {grown / 2**20:.1f} MiB"
    assert raw.exchange(_ping()).header["status"] == "ok"


def test_the_client_applies_the_same_limits_to_replies() -> None:
    """A hostile 'worker' answering with too many frames gets a ProtocolError, not unbounded buffering."""

    def answer(body: list[bytes]) -> list[bytes]:
        reply = {"v": 2, "op": "info", "id": json.loads(body[0])["id"], "status": "ok"}
        return [json.dumps(reply).encode(), *[b"x" * 1000] * 50]

    with fake_worker(answer) as endpoint, WorkerClient(endpoint, timeout_s=5, retries=0) as client:
        with pytest.raises(P.ProtocolError, match="beyond this client's limits") as info:
            client.info()
        assert info.value.code == "too_many_frames"
        assert client._control_link(endpoint).sock.getsockopt(zmq.MAXMSGSIZE) > 0  # each frame bounded too


# -- specific codes, strict numbers, bounded logs -----------------------------------------------------------



@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([json.dumps(_segment(arrays=[{"name": "pixels", "dtype": ["uint8"], "shape": [64, 64, 3]}])).encode(),
          bytes(64 * 64 * 3)], "bad_array"),
        ([json.dumps(_segment(arrays=[{"name": "pixels", "dtype": "uint8", "shape": [0, 10**30]}])).encode(), b""],
         "bad_array"),
        ([json.dumps(_segment(arrays=[{"name": "pixels", "dtype": "uint8", "shape": [0, 2**30, 2**30]}])).encode(),
          b""], "bad_array"),
        ([json.dumps(_segment(arrays=[{"name": "pixels", "dtype": "uint8", "shape": [64, 64, 3]}])).encode(),
          bytes(10)], "bad_array"),
        ([json.dumps(_segment(v=2.0)).encode(), bytes(64 * 64 * 3)], "unsupported_version"),
        ([json.dumps(_segment(v=True)).encode(), bytes(64 * 64 * 3)], "unsupported_version"),
        ([json.dumps(_segment()).replace('"index": 0', '"index": 1e400').encode(), bytes(64 * 64 * 3)], "bad_header"),
        ([json.dumps(_segment(lease_s=1e300)).encode(), bytes(64 * 64 * 3)], "bad_header"),
        ([json.dumps(_segment(index=0.0)).encode(), bytes(64 * 64 * 3)], "bad_header"),
        ([json.dumps({"v": 2, "op": "open", "height": 64, "width": 64.0}).encode()], "bad_header"),
        ([json.dumps({"v": 2, "op": "open", "height": 64, "width": 64, "patch": True}).encode()], "bad_header"),
        ([json.dumps({"v": 2, "op": "ping"}).encode(), b"x"], "bad_array"),
    ],
)
def test_malformed_messages_get_their_specific_code_from_a_real_worker(raw, frames: list, code: str) -> None:
    reply = raw.exchange(frames)
    assert _code(reply) == code, reply.header
    assert "numpy" not in reply.header["message"] and "Traceback" not in reply.header["message"]


def test_a_long_version_is_clipped_in_the_reply_and_the_log(worker, raw) -> None:
    reply = raw.exchange([json.dumps({"v": "7" * 60_000, "op": "ping", "id": "long"}).encode()])
    assert _code(reply) == "unsupported_version" and len(reply.header["message"]) < 200
    time.sleep(0.2)
    lines = [line for line in worker.log_path.read_text().splitlines() if "unsupported_version" in line]
    assert lines and max(len(line) for line in lines) < 2000


# -- leases: a vanished client's work stops -----------------------------------------------------------------

_VANISHING_CLIENT = """
import sys, numpy as np
from worker.client import WorkerClient
img = np.random.default_rng(5).integers(0, 256, (400, 800, 3), dtype=np.uint8)
with WorkerClient(sys.argv[1], timeout_s=float(sys.argv[2])) as client:
    client.segment_raster(400, 800, lambda y0, x0, y1, x1: (img[y0:y1, x0:x1], None), lambda *a: None,
                          patch=64, stride=8, chunk_size=400)
"""


def _working(client: WorkerClient) -> tuple[bool, int]:
    status = client.status()
    return status["busy"], status["queued"]


def test_a_vanished_client_stops_the_work_within_its_timeout(worker) -> None:
    """kill -9 of a client with one chunk running (2,000+ windows, far longer than its lease) and one queued:
    the worker drops both once the lease runs out."""
    timeout_s = 2.0
    child = subprocess.Popen([PYTHON, "-c", _VANISHING_CLIENT, worker.endpoint, str(timeout_s)], cwd=REPO)
    with WorkerClient(worker.endpoint, timeout_s=10) as observer:
        try:
            deadline = time.monotonic() + 60
            while _working(observer) != (True, 1) and time.monotonic() < deadline:
                assert child.poll() is None, "the client exited before its chunks ran"
                time.sleep(0.1)
            assert _working(observer) == (True, 1), "the chunks never started"
            time.sleep(timeout_s)  # the lease is renewed meanwhile: still computing
            assert _working(observer) == (True, 1) and child.poll() is None
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        killed = time.monotonic()
        while _working(observer) != (False, 0) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        stopped_after = time.monotonic() - killed
    assert stopped_after < timeout_s + 3.0, f"still computing {stopped_after:.1f} s after the client vanished"
    expired = [json.loads(line) for line in worker.log_path.read_text().splitlines() if '"event": "expired"' in line]
    assert expired and expired[-1]["dropped"] == 1 and expired[-1]["running"] is True
    assert '"reason": "expired"' in worker.log_path.read_text()


def test_a_live_client_keeps_its_lease_through_a_long_chunk(worker, tiny_model) -> None:
    """A chunk that runs several leases long completes: the run's keep-alives renew the lease."""
    from worker_support import reference

    img = image(31, 200, 200)
    expired_before = worker.log_path.read_text().count('"event": "expired"')
    started = time.monotonic()
    with WorkerClient(worker.endpoint, timeout_s=1.0) as client:
        out, _, stats, _ = segment(client, img, patch=64, stride=16, chunk_size=208)
    assert time.monotonic() - started > 2.0, "the chunk was too short to outlive a lease"
    assert stats["chunks"] == 1 and stats["retries"] == 0
    assert worker.log_path.read_text().count('"event": "expired"') == expired_before
    probabilities = reference(tiny_model, img, 64, 16)
    differ = out != probabilities.argmax(0)
    # The worker runs one torch thread, this process several: the last bits differ, so only a pixel at a near tie
    # (top two probabilities within 1e-4) may take the other class; any other difference is a wrong stitch.
    top2 = np.sort(probabilities, axis=0)[-2:]
    assert not (differ & (top2[1] - top2[0] > 1e-4)).any(), f"{int(differ.sum())} pixels differ beyond a near tie"


# -- one handshake ------------------------------------------------------------------------------------------


def test_a_job_opens_with_one_round_trip_before_its_chunks() -> None:
    """A recording fake worker: the client's first message is 'open', the next ones are the chunks."""
    ops: list[str] = []
    info = {"protocol": P.PROTOCOL_VERSION, "model": "FactSeg", "backbone": "fake", "classes": [], "patch": 64, "stride": 32,
            "chunk_size": 64, "limits": P.DEFAULT_LIMITS.to_dict()}

    def answer(body: list[bytes]) -> list:
        request = P.parse_request(P.decode(body))
        ops.append(request.OP)
        header = {"v": P.PROTOCOL_VERSION, "op": request.OP, "id": request.id, "status": "ok"}
        arrays = None
        if isinstance(request, P.OpenRequest):
            header.update(info, height=64, width=64, chunks=[[0, 0, 0, 64, 64, 0, 0, 64, 64]])
        elif isinstance(request, P.SegmentRequest):
            header.update(request=request.request, index=request.index, seconds=0.0)
            arrays = {"classes": np.full((64, 64), 3, np.uint8)}
        return P.encode(header, arrays)

    with fake_worker(answer) as endpoint, WorkerClient(endpoint, timeout_s=5) as client:
        out, _, stats, _ = segment(client, image(1, 64, 64), patch=None, stride=None, chunk_size=None)
    assert [op for op in ops if op != "ping"] == ["open", "segment"]
    assert (stats["patch"], stats["stride"], stats["chunk_size"]) == (64, 32, 64)  # the worker's defaults
    assert (out == 3).all()


def test_open_gives_info_and_plan_and_several_endpoints_must_agree(worker, tiny_checkpoint) -> None:
    with WorkerClient(worker.endpoint, timeout_s=10) as client:
        info, options, chunks = client.open_job(300, 200)
        assert info["backbone"] == "resnet18" and info["limits"]["max_frame_bytes"] == MAX_MB * 2**20
        assert options == {"patch": 896, "stride": 512, "chunk_size": 4096}
        assert chunks == client.open_job(300, 200, 896, 512, 4096).chunks  # the defaults, resolved
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--chunk-size", "1024") as other:
        with WorkerClient([worker.endpoint, other.endpoint], timeout_s=10) as client:
            with pytest.raises(WorkerError, match="workers disagree on chunk_size"):
                client.open_job(300, 200)
            _, options, _ = client.open_job(300, 200, chunk_size=2048)  # agree once the job says
            assert options["chunk_size"] == 2048


# -- the fuzzer ---------------------------------------------------------------------------------------------


def _fuzz_messages(rng: np.random.Generator, count: int) -> list[list[bytes]]:
    """Hostile or broken messages of every kind; none is a valid segment (each gets exactly one reply)."""
    valid_segment = json.dumps(_segment()).encode()
    kinds = ["bytes", "truncated", "oversized", "version", "op", "shape", "dtype", "frames", "length", "fields"]
    messages = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "bytes":
            message = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 5)))]
        elif kind == "truncated":
            message = [valid_segment[: int(rng.integers(0, len(valid_segment) - 1))], bytes(64 * 64 * 3)]
        elif kind == "oversized":
            message = [json.dumps({"v": 2, "op": "ping", "pad": "x" * int(rng.integers(65_536, 90_000))}).encode()]
        elif kind == "version":
            version = [0, 1, -1, 2.0, True, "2", None, [2], 10**30, 1.5][int(rng.integers(0, 10))]  # none is 2
            message = [json.dumps(_segment(v=version)).encode(), bytes(64 * 64 * 3)]
        elif kind == "op":
            message = [json.dumps({"v": 2, "op": rng.bytes(8).hex(), "id": str(i)}).encode()]
        elif kind == "shape":
            shape = [[64, 64], [64, 64, 4], [0, 10**30], [-1, 3], [2**40], [64, 64, 3, 1, 1], "64", [64.0, 64, 3]][
                int(rng.integers(0, 8))]
            message = [json.dumps(_segment(arrays=[{"name": "pixels", "dtype": "uint8", "shape": shape}])).encode(),
                       bytes(64 * 64 * 3)]
        elif kind == "dtype":
            dtype = ["float64", "object", ["uint8"], {"k": 1}, 7, "", "<u1", "float32"][int(rng.integers(0, 8))]
            message = [json.dumps(_segment(arrays=[{"name": "pixels", "dtype": dtype, "shape": [64, 64, 3]}])).encode(),
                       bytes(64 * 64 * 3)]
        elif kind == "frames":
            message = [valid_segment, *[bytes(64 * 64 * 3)] * int(rng.choice([0, 2, 3, 7, 40]))]
        elif kind == "length":
            message = [valid_segment, bytes(int(rng.integers(0, 64 * 64 * 3 - 1)))]
        else:
            field, value = [("index", 3), ("index", -1), ("src", [0, 0, 64]), ("image_size", [64, 10**9]),
                            ("patch", 16), ("stride", 100), ("request", ""), ("tta", "yes"), ("lease_s", -1),
                            ("out", [0, 0, 32, 32])][int(rng.integers(0, 10))]
            message = [json.dumps(_segment(**{field: value})).encode(), bytes(64 * 64 * 3)]
        messages.append(message)
    return messages


def test_fuzzer_thousands_of_hostile_messages(worker, raw) -> None:
    img = image(41, 96, 128)
    with WorkerClient(worker.endpoint, timeout_s=20) as client:
        before_classes = segment(client, img, patch=64, stride=32, chunk_size=64)[0]
    rss_before = rss_bytes(worker.process.pid)
    messages = _fuzz_messages(np.random.default_rng(2024), 3000)
    started = time.monotonic()
    codes: dict[str, int] = {}
    for batch in range(0, len(messages), 50):
        group = messages[batch : batch + 50]
        for message in group:
            raw.send(message)
        replies = raw.replies(len(group))
        assert len(replies) == len(group), f"{len(group) - len(replies)} messages of batch {batch} got no reply"
        for reply in replies:
            code = reply.header.get("code", "ok")
            codes[code] = codes.get(code, 0) + 1
    assert time.monotonic() - started < 60
    assert worker.process.poll() is None
    assert "internal" not in codes, codes
    assert {"bad_header", "bad_array", "unsupported_version", "unknown_op", "header_too_large",
            "too_many_frames", "bad_chunk"} <= set(codes), codes
    assert raw.exchange(_ping()).header["status"] == "ok"
    grown = rss_bytes(worker.process.pid) - rss_before
    assert grown < 8 * 2**20, f"the worker grew by {grown / 2**20:.1f} MiB"
    with WorkerClient(worker.endpoint, timeout_s=20) as client:
        np.testing.assert_array_equal(segment(client, img, patch=64, stride=32, chunk_size=64)[0], before_classes)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
