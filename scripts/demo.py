"""`make demo`: the main job end to end, on data this project generates (no downloads).

1. a synthetic mini-iSAID and a georeferenced scene (``python -m training.synthetic``), if not there yet;
2. the small demo model (``training/train.py --config training/configs/demo.yaml``), if not trained yet;
3. a worker process serving it over ZeroMQ (loopback);
4. the plugin's Processing algorithm ``factseg:segment`` run by a real headless QGIS (``qgis_process``);
5. ``demo_output/``: the class GeoTIFF, the polygons, a PNG preview and per-class IoU against the ground truth.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from osgeo import gdal

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from factseg_core.classes import classes_from_dicts  # noqa: E402
from scripts.preview import write_preview  # noqa: E402
from training.evaluate import confusion_matrix, format_table, summarize  # noqa: E402
from worker.client import start_local_worker  # noqa: E402
from worker.io.raster_output import read_class_table  # noqa: E402

gdal.UseExceptions()
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
SYNTHETIC_NOTE = (
    "Note: the demo model is a small FactSeg (ResNet-18) trained for a few minutes on SYNTHETIC images; its\n"
    "scores say the pipeline works, not how FactSeg does on real imagery. For real imagery use the authors'\n"
    "released factseg50.pth (FactSeg-R50 on iSAID): start a worker with\n"
    "  .venv/bin/python -m worker --model /path/to/factseg50.pth\n"
    "and run Segment Layer in QGIS (or `qgis_process.bin run factseg:segment`) against it; see README.md."
)


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    print("   $", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, **kwargs)


def ensure_data(data_dir: Path) -> Path:
    scene = data_dir / "scene" / "scene.tif"
    if scene.is_file():
        print(f"   synthetic data already in {data_dir}")
    else:
        run([sys.executable, "-m", "training.synthetic", "--out", data_dir])
    return scene


def ensure_model(data_dir: Path, work_dir: Path, max_iters: int | None) -> Path:
    model = work_dir / "final.pt"
    if model.is_file():
        print(f"   demo model already trained: {model}")
        return model
    cmd = [sys.executable, "training/train.py", "--config", "training/configs/demo.yaml",
           "--data-root", data_dir, "--work-dir", work_dir]
    if max_iters:
        cmd += ["--max-iters", str(max_iters)]
    run(cmd)
    return model


def build_plugin(plugins_dir: Path) -> None:
    run(["bash", "scripts/build_plugin.sh"])
    shutil.rmtree(plugins_dir, ignore_errors=True)
    plugins_dir.mkdir(parents=True)
    with zipfile.ZipFile(REPO / "dist" / "factseg.zip") as archive:
        archive.extractall(plugins_dir)


def qgis_segment(endpoint: str, scene: Path, out_dir: Path, patch: int, stride: int) -> None:
    """Run factseg:segment through qgis_process with the plugin from the built zip, in a throw-away profile."""
    plugins_dir = REPO / "build" / "demo_plugins"
    build_plugin(plugins_dir)
    with tempfile.TemporaryDirectory(prefix="factseg-qgis-profile-") as profile:
        env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=profile, QGIS_PLUGINPATH=str(plugins_dir),
                   QT_QPA_PLATFORM="offscreen")
        run([QGIS_PROCESS, "plugins", "enable", "factseg"], env=env, stdout=subprocess.DEVNULL)
        run([QGIS_PROCESS, "run", "factseg:segment", "--",
             f"INPUT={scene}", f"WORKER={endpoint}", f"PATCH={patch}", f"STRIDE={stride}",
             f"OUTPUT={out_dir / 'classes.tif'}", f"OUTPUT_VECTOR={out_dir / 'objects.gpkg'}"], env=env)


def report(scene: Path, truth_path: Path, out_dir: Path) -> dict:
    classes = read_class_table(out_dir / "classes.tif")
    prediction = gdal.Open(str(out_dir / "classes.tif")).ReadAsArray()
    truth = gdal.Open(str(truth_path)).ReadAsArray()
    image = np.moveaxis(gdal.Open(str(scene)).ReadAsArray()[:3], 0, -1)
    write_preview(out_dir / "preview.png", image, truth, prediction, classes)
    matrix = confusion_matrix(prediction, truth, len(classes))
    summary = summarize(matrix, classes_from_dicts(classes))
    print(format_table(summary))
    (out_dir / "iou.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "demo_data" / "synthetic")
    parser.add_argument("--work-dir", type=Path, default=REPO / "demo_data" / "model")
    parser.add_argument("--out-dir", type=Path, default=REPO / "demo_output")
    parser.add_argument("--model", type=Path, help="use this checkpoint instead of training the demo model")
    parser.add_argument("--max-iters", type=int, help="override the demo config's training length")
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    args = parser.parse_args()
    started = time.time()

    step("1/5 synthetic mini-iSAID and a georeferenced scene")
    scene = ensure_data(args.data_dir)
    step("2/5 the demo model (FactSeg ResNet-18 on the synthetic set)")
    model = args.model or ensure_model(args.data_dir, args.work_dir, args.max_iters)
    step("3/5 a FactSeg worker on loopback")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{tempfile.gettempdir()}/factseg-demo-{os.getpid()}.sock"
    with start_local_worker(sys.executable, str(model), endpoint=endpoint, device="auto", pythonpath=str(REPO)) as worker:
        print(f"   worker ready at {worker.endpoint}")
        step("4/5 factseg:segment through headless QGIS (qgis_process)")
        qgis_segment(worker.endpoint, scene, args.out_dir, args.patch, args.stride)
    step("5/5 results")
    report(scene, scene.with_name("scene_gt.tif"), args.out_dir)
    print(f"\n   demo_output/: {', '.join(sorted(p.name for p in args.out_dir.iterdir()))}")
    print(f"   finished in {time.time() - started:.0f} s")
    print("\n" + SYNTHETIC_NOTE)


if __name__ == "__main__":
    main()
