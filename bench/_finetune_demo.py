"""bench/finetune.py's default run: factseg:train with default parameters (CONFIG auto, ITERATIONS 0) on a CPU
worker serving the demo model, fine-tuning on an export of the demo scene.

The export is what factseg:export_training_data writes for the demo scene (PATCH 256 as in README's loop,
no overlap, VAL_FRACTION 0.2) with the scene's ground truth as the analyst's labels (their class names), written
by the export's own writer; the training goes through a real worker process and the same client
(RemoteTraining) as the Processing algorithm.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

from factseg_core.classes import ISAID_CLASSES
from worker.client import WorkerClient, start_local_worker
from worker.client.training_client import RemoteTraining
from worker.io.training_export import TrainingDataWriter, build_class_table, plan_tiles

REPO = Path(__file__).resolve().parent.parent


def demo_export(scene: Path, truth: Path, out: Path, patch: int = 256, val_fraction: float = 0.2) -> dict:
    """An export of the demo scene labelled with its ground truth; returns tile counts and class names."""
    image = gdal.Open(str(scene)).ReadAsArray()[:3].transpose(1, 2, 0)
    gt = gdal.Open(str(truth)).ReadAsArray()
    names = {c.id: c.name for c in ISAID_CLASSES}
    present = sorted(int(v) for v in np.unique(gt) if 0 < v < 255)
    table, lookup = build_class_table([names[v] for v in present])
    remap = np.full(256, 255, np.uint8)
    remap[0] = 0
    for value in present:
        remap[value] = lookup[names[value]]
    labels = remap[gt]
    tiles = plan_tiles(gt.shape[0], gt.shape[1], patch, patch, val_fraction, "scene")
    with TrainingDataWriter(out, table) as writer:
        for t in tiles:
            writer.write(t, image[t.y0:t.y1, t.x0:t.x1].copy(), labels[t.y0:t.y1, t.x0:t.x1].copy())
        writer.commit({"tiles": []})
    return {"tiles": {s: sum(t.split == s for t in tiles) for s in ("train", "val")},
            "classes": [row["name"] for row in table]}


def train_with_defaults(model: Path, data: Path, output: Path, python: str = sys.executable) -> dict:
    """factseg:train's defaults on a CPU worker: returns wall time, iterations/s, mIoU and the log of progress."""
    seen: list[tuple[float, int]] = []
    endpoint = f"ipc:///tmp/factseg-bench-finetune-{os.getpid()}.sock"
    with start_local_worker(python, str(model), endpoint=endpoint, device="cpu", pythonpath=str(REPO)) as worker:
        with WorkerClient(worker.endpoint, timeout_s=120) as client:
            device = client.info().get("device")
            started = time.perf_counter()

            def progress(p) -> None:
                if p.state == "running" and p.iteration and (not seen or seen[-1][1] != p.iteration):
                    seen.append((time.perf_counter(), p.iteration))
                    print(f"   iteration {p.iteration}/{p.iterations} loss {p.loss} eta {p.eta_s}", flush=True)

            outcome = RemoteTraining(client).run(data, output, 0, "served", None, progress, preset="auto")
            wall = time.perf_counter() - started
    rate = ((seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])) if len(seen) > 1 else None
    evaluation = outcome.evaluation or {}
    return {"device": device, "wall_s": round(wall, 1), "iterations": seen[-1][1] if seen else None,
            "iterations_per_s": round(rate, 3) if rate else None, "miou": evaluation.get("miou"),
            "per_class": {r.get("name"): r.get("iou") for r in evaluation.get("per_class") or []}}
