"""Helpers shared by the worker's tests: real worker processes, test images, GeoTIFFs, the CLI, a tiny export.

They live here (not in a test module) so that any test file, in any folder, can import them.
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import zmq
from osgeo import gdal, osr
from project_paths import REPO_ROOT as REPO
from project_paths import VENV_PYTHON

from worker.client import LocalWorker, WorkerClient, start_local_worker
from worker.io.training_export import Tile, TrainingDataWriter, build_class_table

gdal.UseExceptions()
PYTHON = str(VENV_PYTHON)
PATCH, STRIDE, CHUNK = 128, 64, 128


def free_tcp_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def start_worker(checkpoint: Path, endpoint: str, *extra: str) -> LocalWorker:
    return start_local_worker(PYTHON, str(checkpoint), endpoint, device="cpu", pythonpath=str(REPO),
                              ready_timeout_s=120, extra_args=["--threads", "1", *extra])


def image(seed: int, height: int = 160, width: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference(model, img: np.ndarray, patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
    from factseg_core import sliding_predict

    return sliding_predict(model, img, patch, stride, batch_size=4)


def segment(client: WorkerClient, img: np.ndarray, valid: np.ndarray | None = None, **kwargs):
    height, width = img.shape[:2]
    out = np.full((height, width), 77, np.uint8)
    conf = np.full((height, width), -5.0, np.float32)
    calls = []

    def reader(y0: int, x0: int, y1: int, x1: int):
        return img[y0:y1, x0:x1], None if valid is None else valid[y0:y1, x0:x1]

    def writer(y0: int, x0: int, classes: np.ndarray, confidence: np.ndarray | None) -> None:
        h, w = classes.shape
        calls.append((y0, x0, h, w))
        out[y0 : y0 + h, x0 : x0 + w] = classes
        if confidence is not None:
            conf[y0 : y0 + h, x0 : x0 + w] = confidence

    kwargs = {"patch": PATCH, "stride": STRIDE, "chunk_size": CHUNK, **kwargs}
    stats = client.segment_raster(height, width, reader, writer, **kwargs)
    return out, conf, stats, calls


def segment_header(**overrides) -> dict:
    header = {"v": 2, "op": "segment", "id": "f", "request": "fuzz", "index": 0, "image_size": [64, 64],
              "src": [0, 0, 64, 64], "out": [0, 0, 64, 64], "patch": 64, "stride": 32, "chunk_size": 64,
              "arrays": [{"name": "pixels", "dtype": "uint8", "shape": [64, 64, 3]}]}
    header.update(overrides)
    return header


class CountingProxy:
    """A real ZeroMQ hop between clients and one worker that records the op of every request passing through.

    Clients connect to :attr:`endpoint` (a loopback ROUTER); each client socket gets its own DEALER to the worker
    with the client's routing id (when the client set one), so the worker sees the same peers, resends and hand-overs as without the proxy.
    Frames are forwarded unchanged; :attr:`ops` lists the requests' ops in arrival order.
    """

    def __init__(self, worker_endpoint: str) -> None:
        self.worker_endpoint = worker_endpoint
        self.ops: list[str] = []
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        port = self._front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._backs: dict[bytes, zmq.Socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def ops_before(self, op: str) -> list[str]:
        """The requests that came before the first ``op`` (all of them when there was none), less the pulse's
        liveness pings: they come on a connection of their own, at any time, and are no round trip of the job."""
        before = self.ops[: self.ops.index(op)] if op in self.ops else self.ops
        return [o for o in before if o != "ping"]

    def _back(self, identity: bytes, poller: zmq.Poller) -> zmq.Socket:
        if identity not in self._backs:
            back = self._backs[identity] = self._ctx.socket(zmq.DEALER)
            back.setsockopt(zmq.LINGER, 0)
            if identity[:1] != b"\x00":  # ids the proxy's ROUTER made up start with a zero byte, reserved
                back.setsockopt(zmq.ROUTING_ID, identity)
            back.connect(self.worker_endpoint)
            poller.register(back, zmq.POLLIN)
        return self._backs[identity]

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                frames = sock.recv_multipart()
                if sock is self._front:
                    identity, body = frames[0], frames[1:]
                    try:
                        self.ops.append(str(json.loads(body[0]).get("op")))
                    except (ValueError, IndexError, AttributeError):
                        self.ops.append("?")
                    self._back(identity, poller).send_multipart(body)
                else:
                    identity = next(i for i, s in self._backs.items() if s is sock)
                    self._front.send_multipart([identity, *frames])

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self._front, *self._backs.values()]:
            sock.close(linger=0)
        self._ctx.term()


GT = (500000.0, 0.5, 0.0, 4500000.0, 0.0, -0.5)
ARGS = ["--patch", "64", "--stride", "32", "--chunk-size", "64", "--quiet"]


def write_rgb(path: Path, pixels: np.ndarray, nodata: int | None = None, dtype: int = gdal.GDT_Byte) -> Path:
    height, width = pixels.shape[:2]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, 3, dtype)
    ds.SetGeoTransform(GT)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(3):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(pixels[:, :, i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return path


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "worker.segment", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


TINY_CONFIG = """\
model: {backbone: resnet18}
data: {patch: 64, stride: 64, workers: 0}
train: {batch_size: 2, lr: 0.001, warmup_iters: 0, log_every: 1, checkpoint_every: 100000, amp: "off",
        channels_last: false}
eval: {patch: 64, stride: 64, batch_size: 1}
"""


def make_export(folder: Path, tiles: int = 4, gsd_m: float | None = None) -> Path:
    """A small export with three user classes painted as rectangles (what factseg:export_training_data writes);
    ``gsd_m``: the ground resolution its export.json records (the model card's)."""
    table, _ = build_class_table(["tank", "vehicle", "vessel"])
    rng = np.random.default_rng(0)
    with TrainingDataWriter(folder, table) as writer:
        for i in range(tiles):
            split = "val" if i == tiles - 1 else "train"
            rgb = image(i, 64, 64)
            labels = np.zeros((64, 64), np.uint8)
            for class_id in (1, 2, 3):
                y, x = rng.integers(0, 48, 2)
                labels[y:y + 12, x:x + 12] = class_id
                rgb[y:y + 12, x:x + 12] = 60 * class_id
            labels[:2] = 255
            writer.write(Tile(split, f"t{i}", 0, 0, 64, 64), rgb, labels)
        writer.commit({"tiles": []} if gsd_m is None else {"tiles": [], "gsd_m": gsd_m})
    return folder
