"""Small helpers the benchmark scripts share (run them as scripts from the repository root)."""
from __future__ import annotations

import socket
from pathlib import Path


def free_tcp() -> str:
    """A loopback TCP endpoint on a port that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def random_checkpoint(path: Path, backbone: str) -> Path:
    """A FactSeg checkpoint with seeded random weights: timing does not depend on weight values."""
    import torch

    from factseg_core import FactSeg, FactSegConfig, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(FactSeg(FactSegConfig(backbone=backbone)).eval(), path)
    return path
