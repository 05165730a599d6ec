"""Defaults and limits of a segmentation run, shared by the plugin, the CLI, the worker and the engine."""
from __future__ import annotations

#: Sliding-window protocol of the reference iSAID evaluation (FactSeg, TGRS 2021): window side and step.
PATCH_SIZE: int = 896
STRIDE: int = 512
#: Largest patch (and stride) a worker accepts and the plugin offers: a 4096² window already needs several GiB
#: of activations.
MAX_PATCH: int = 4096
#: Default side of the independent chunks a raster is tiled into for the worker (rounded down to the stride):
#: larger chunks compute fewer windows twice at their borders, at the cost of bigger messages.
CHUNK_SIZE: int = 4096
#: Windows per forward pass when nothing else is asked (the runner may cap it: one on CPU).
BATCH_SIZE: int = 4
#: Class id written for nodata pixels of a class raster (uint8; no class may use it).
NODATA_CLASS: int = 255
#: Label ignored by the losses, by evaluation and in training masks (the same byte as nodata: neither is a class).
IGNORE_INDEX: int = NODATA_CLASS
#: Where a worker binds, and a client connects, when nothing is said: loopback only.
DEFAULT_ENDPOINT: str = "tcp://127.0.0.1:5555"
