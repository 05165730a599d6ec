"""The fuzzer, on the ``train_*`` operations: hostile names, pieces, totals, presets, overrides, and job ids
and tokens of other peers, from two raw peers at once. Bounded (well under a minute of messages); afterwards the
worker is alive, its memory and its job folders are bounded, and it segments exactly as before."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from train_support import RawPeer, job_folders, rss_bytes, tree_bytes
from worker_support import free_tcp_endpoint, image, segment, start_worker

from worker.client import WorkerClient
from worker.client import protocol as P

MESSAGES = 1500
NAMES = ["classes.json", "config.yaml", "init.pt", "train/images/a.png", "val/masks/b_instance_color_RGB.png",
         "../escape.png", "train/images/../../x.png", "/etc/passwd", "train/images/a.exe", "train\\images\\a.png",
         "", "train/images/" + "a" * 300 + ".png", "train/images/a.png\x00.png", "train/images/%2e%2e.png", 7]
#: Per field: values a worker accepts, then hostile ones (each field is hostile a quarter of the time).
GOOD = {"files": [1, 2, 3], "bytes": [10, 3000, 2**20], "iterations": [1, 3], "init_from": ["served", "scratch"],
        "preset": [None, "demo"], "overrides": [None, {}, {"train": {"lr": 0.1}}], "offset": [0, 0, 5, 100],
        "size": [10, 100, 2000]}
BAD = {
    "files": [0, -1, 50_001, 1.5, "2", True],
    "bytes": [2**34 + 1, 2**50, 0, -5, "10", float("inf")],
    "iterations": [0, 10**7, "3", None],
    "init_from": ["upload", "../x", 5],
    "preset": ["../demo", "/etc/passwd", 7, "x" * 100, "demo.yaml"],
    "overrides": [{"data": {"cache_dir": "/tmp"}}, [1], "x", {"train": {"iters": {"$ne": 1}}},
                  {"data": {"train_split": "../../x"}}],
    "offset": [2**41, -1, "0"],
    "size": [0, 2**31, 2**30 + 1, -3, None],
}
OPS = ["train_begin"] * 2 + ["train_file"] * 4 + ["train_start", "train_status", "train_cancel", "train_result"]


class Actor:
    """One peer with its own job (once a begin of its succeeds) and the other's job id to try."""

    def __init__(self, endpoint: str) -> None:
        self.peer = RawPeer(endpoint)
        self.job: str | None = None
        self.token: str | None = None


def _pick(rng: np.random.Generator, values: list):
    return values[int(rng.integers(0, len(values)))]


def _field(rng: np.random.Generator, key: str):
    return _pick(rng, GOOD[key] if rng.random() < 0.75 else BAD[key])


def _message(rng: np.random.Generator, me: Actor, other: Actor) -> tuple[list, bool]:
    """Frames of one hostile message and whether it targets the other peer's job."""
    op = _pick(rng, OPS)
    header: dict = {"v": P.PROTOCOL_VERSION, "op": op, "id": f"f{int(rng.integers(1 << 30))}"}
    arrays = None
    if op == "train_begin":
        header.update({k: _field(rng, k) for k in ("files", "bytes", "iterations", "init_from", "preset",
                                                            "overrides")})
        header = {k: v for k, v in header.items() if v is not None}
        return [json.dumps(header).encode()], False  # json.dumps, not encode(): infinities get through too
    target = _pick(rng, [me.job, me.job, other.job, other.job, "0" * 32, rng.bytes(16).hex(), "../../etc", 5, None])
    token = _pick(rng, [me.token, me.token, None, rng.bytes(16).hex(), "zz", 5, ""])  # never the other's
    header.update({"job": target, "token": token})
    if op == "train_file":
        header.update(name=_pick(rng, NAMES), offset=_field(rng, "offset"), size=_field(rng, "size"))
        arrays = {"data": rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8)}
    if op == "train_result":
        header["offset"] = _field(rng, "offset")
    header = {k: v for k, v in header.items() if v is not None}
    return P.encode(header, arrays), target is not None and target == other.job


@pytest.fixture(scope="module")
def fuzzed(tiny_checkpoint, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("fuzz-jobs")
    with start_worker(tiny_checkpoint, free_tcp_endpoint(), "--train-dir", str(jobs)) as worker:
        yield worker, jobs


def test_fuzzed_train_ops_leave_the_worker_serving_and_bounded(fuzzed):
    worker, jobs = fuzzed
    img = image(51, 96, 128)
    with WorkerClient(worker.endpoint, timeout_s=20) as client:
        before_classes = segment(client, img, patch=64, stride=32, chunk_size=64)[0]
    rss_before = rss_bytes(worker.process.pid)
    rng = np.random.default_rng(1818)
    actors = [Actor(worker.endpoint), Actor(worker.endpoint)]
    codes: dict[str, int] = {}
    started = time.monotonic()
    try:
        for i in range(MESSAGES):
            me, other = actors[i % 2], actors[1 - i % 2]
            frames, foreign = _message(rng, me, other)
            reply = me.peer.exchange(frames)
            assert reply is not None, "the worker did not answer"
            code = reply.header.get("code", reply.header["status"])
            codes[code] = codes.get(code, 0) + 1
            assert code in P.ERROR_CODES or code == "ok", reply.header
            assert code != "internal", reply.header
            assert not (foreign and code == "ok"), f"a peer used another's job: {reply.header}"
            if reply.header.get("op") == "train_begin" and code == "ok":
                me.job, me.token = reply.header["job"], reply.header["token"]
            assert len(job_folders(jobs)) <= 1
            if time.monotonic() - started > 45:
                break
        for actor in actors:  # each lets go of its job, if it still has one
            if actor.job is not None:
                actor.peer.exchange(P.encode({"op": "train_cancel", "job": actor.job, "token": actor.token}))
    finally:
        for actor in actors:
            actor.peer.close()
    assert worker.process.poll() is None
    assert {"ok", "not_owner", "bad_file", "bad_header", "bad_config", "busy_training", "unknown_job"} <= set(codes), codes
    assert job_folders(jobs) == [] and tree_bytes(jobs) == 0
    grown = rss_bytes(worker.process.pid) - rss_before
    assert grown < 32 * 2**20, f"the worker grew by {grown / 2**20:.1f} MiB"
    with WorkerClient(worker.endpoint, timeout_s=20) as client:
        np.testing.assert_array_equal(segment(client, img, patch=64, stride=32, chunk_size=64)[0], before_classes)
