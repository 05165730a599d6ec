"""Helpers for the tests of training over the wire: raw train_* exchanges, job folders, processes, tmpfs."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np

from worker.client import WorkerClient
from worker.client import training_protocol as T
from worker.client.protocol import RemoteError


def export_upload(export: Path, config_text: str | None = None) -> list[tuple[str, bytes]]:
    """(upload name, bytes) of every file of an export folder (and a config.yaml when given)."""
    from worker.client.training_client import export_files

    files = [(name, path.read_bytes()) for name, path in export_files(export)]
    if config_text is not None:
        files.append(("config.yaml", config_text.encode()))
    return files


def begin(client: WorkerClient, files: list[tuple[str, bytes]], iterations: int = 3, **kwargs) -> tuple[str, str]:
    """``train_begin`` for ``files``; returns (job, token)."""
    reply = client.request(T.TrainBegin(files=len(files), bytes=sum(len(b) for _, b in files),
                                        iterations=iterations, **kwargs)).header
    return reply["job"], reply["token"]


def send(client: WorkerClient, job: str, token: str, files: list[tuple[str, bytes]]) -> None:
    """Upload every file in pieces of at most PIECE_BYTES."""
    for name, data in files:
        for offset in range(0, len(data), T.PIECE_BYTES):
            piece = np.frombuffer(data[offset:offset + T.PIECE_BYTES], np.uint8)
            client.request(T.TrainFile(job=job, token=token, name=name, offset=offset, size=len(data), data=piece))


def upload(client: WorkerClient, files: list[tuple[str, bytes]], iterations: int = 3, **kwargs) -> tuple[str, str]:
    job, token = begin(client, files, iterations, **kwargs)
    send(client, job, token, files)
    return job, token


def code_of(call) -> str:
    """The error code a call is refused with ('' when it succeeds)."""
    try:
        call()
    except RemoteError as exc:
        return exc.code
    return ""


def wait_for(client: WorkerClient, job: str, token: str, states: tuple[str, ...], limit_s: float = 240.0,
             until=None) -> dict:
    """Poll ``train_status`` until the state is one of ``states`` (or ``until(status)``); the last status."""
    deadline = time.monotonic() + limit_s
    while True:
        status = client.request(T.TrainStatus(job=job, token=token)).header
        if status["state"] in states or (until is not None and until(status)):
            return status
        assert time.monotonic() < deadline, f"training job stayed {status}"
        time.sleep(0.2)


def job_folders(root: Path) -> list[Path]:
    return sorted(root.glob("factseg-train-*"))


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a small tmpfs at ``folder`` (root only); False where that is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return done.returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


class RawPeer:
    """A bare DEALER: sends any header (and arrays) and returns the decoded reply, or None after a timeout."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def exchange(self, frames: list, timeout_s: float = 15.0):
        from worker.client import protocol as P

        self.sock.send_multipart(frames)
        while self.sock.poll(timeout_s * 1000):
            reply = P.decode(self.sock.recv_multipart(), reply=True)
            if reply.header.get("op") != "heartbeat":
                return reply
        return None

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
