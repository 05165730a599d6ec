"""Sliding-window evaluation of a FactSeg checkpoint: confusion matrix, per-class IoU, mIoU, foreground mIoU.

    .venv/bin/python training/evaluate.py --model CKPT --data-root DIR [--split val] [--tta]
        [--patch 896 --stride 512] [--out metrics.json]
    .venv/bin/python training/evaluate.py --model CKPT --image scene.tif --label scene_gt.tif

Whole images are predicted with the reference window grid by the streaming engine the worker uses
(``factseg_core.sweep.stream_predict``, memory bounded by one band of windows), so the figures are
those a user gets from the plugin. IoU_k = TP / (TP + FP + FN) over all pixels of the split (labels 255
ignored). A class absent from both the ground truth and the predictions has no IoU (NaN, shown as "-") and
is left out of the means; mIoU averages all other classes, foreground mIoU all of them except background.
Any checkpoint ``factseg_core.load_model`` reads works, the released ``factseg50.pth`` included.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from factseg_contract import CLASSES_FILE, ClassTableError
from factseg_core import CheckpointError, load_model
from factseg_core.backends import TorchRunner
from factseg_core.classes import ISAID_CLASSES, ClassInfo
from factseg_core.config import IGNORE_INDEX, PATCH_SIZE, STRIDE
from factseg_core.sweep import stream_predict
from training.errors import DataError
from training.isaid import find_pairs, load_pair


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """C×C int64 counts, rows = ground truth, columns = prediction; ``ignore_index`` pixels are skipped."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = gt != ignore_index
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or p.max() >= num_classes or p.min() < 0):
        raise ValueError(f"labels outside 0..{num_classes - 1} (and not {ignore_index}) in ground truth or prediction")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN where the class is in neither ground truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(cm: np.ndarray, classes: Sequence[ClassInfo]) -> dict:
    """Metrics of a confusion matrix as a JSON-able dict (NaN written as null)."""
    iou = iou_per_class(cm)
    total = int(cm.sum())

    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(float(v), 6)

    return {
        "miou": num(_nanmean(iou)),
        "fg_miou": num(_nanmean(iou[1:])),
        "pixel_accuracy": num(float(np.trace(cm)) / total if total else float("nan")),
        "per_class": [
            {"id": c.id, "name": c.name, "iou": num(iou[c.id]), "gt_pixels": int(cm[c.id].sum()),
             "pred_pixels": int(cm[:, c.id].sum())}
            for c in classes
        ],
        "confusion": cm.tolist(),
        "pixels": total,
    }


def format_table(metrics: dict) -> str:
    """Human-readable table of per-class IoU and the means."""
    lines = [f"{'id':>3}  {'class':<20} {'IoU':>7} {'gt pixels':>12} {'pred pixels':>12}"]
    for row in metrics["per_class"]:
        iou = "-" if row["iou"] is None else f"{100 * row['iou']:.2f}"
        lines.append(f"{row['id']:>3}  {row['name']:<20} {iou:>7} {row['gt_pixels']:>12} {row['pred_pixels']:>12}")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    lines.append(f"mIoU {pct(metrics['miou'])}   foreground mIoU {pct(metrics['fg_miou'])}   "
                 f"pixel accuracy {pct(metrics['pixel_accuracy'])}   ({metrics['pixels']} labelled pixels)")
    return "\n".join(lines)


def make_runner(model: nn.Module, device: torch.device | str | None = None) -> TorchRunner:
    """The engine's torch runner for ``model`` (channels-last on CUDA, where it pays)."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    kind = torch.device(device).type
    return TorchRunner(model, device=kind, channels_last=kind == "cuda")


def predict_labels(
    runner: TorchRunner,
    image: np.ndarray,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 1,
    tta: bool = False,
) -> np.ndarray:
    """H×W uint8 class ids of an H×W×3 image by the streaming sliding-window engine.

    Memory beyond the image and the result is one band of accumulators (C × patch × W floats), so a
    13,000-px iSAID image does not need the 10 GB a full C×H×W probability array would take. ``tta``
    averages each window with its left-right and up-down mirrors (the engine's flip TTA).
    """
    height, width = image.shape[:2]
    out = np.empty((height, width), dtype=np.uint8)

    def read_rows(y0: int, y1: int) -> tuple[np.ndarray, None]:
        return np.ascontiguousarray(image[y0:y1]), None

    def write_rows(y0: int, classes: np.ndarray, _confidence: np.ndarray | None) -> None:
        out[y0 : y0 + classes.shape[0]] = classes

    stream_predict(runner, height, width, read_rows, write_rows, patch, stride, batch_size, tta, prefetch=False)
    return out


def evaluate_arrays(
    model: nn.Module,
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    num_classes: int,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 1,
    tta: bool = False,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Summed confusion matrix over (name, image, labels) items."""
    runner = make_runner(model, device)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _name, image, labels in items:
        pred = predict_labels(runner, image, patch, stride, batch_size, tta)
        cm += confusion_matrix(pred, labels, num_classes)
    return cm


def check_data_classes(classes: Sequence[ClassInfo], data_root: str | os.PathLike) -> None:
    """A data root with its own ``classes.json`` must use the model's class table: masks are decoded by colour."""
    from training.class_table import read_class_table

    table = read_class_table(data_root)
    if table is not None and [c.name for c in table] != [c.name for c in classes]:
        raise DataError(f"the model's classes {[c.name for c in classes]} are not those of {data_root}/{CLASSES_FILE} "
                        f"{[c.name for c in table]}")


def iter_split(data_root: str | os.PathLike, split: str, classes: Sequence[ClassInfo], progress: bool = True):
    """(name, image, labels) of each pair of a split, decoded one at a time (a tqdm bar over images)."""
    pairs = find_pairs(data_root, split)
    for pair in tqdm(pairs, desc=f"evaluating {split}", unit="image", disable=not progress):
        image, labels, unknown = load_pair(pair, classes)
        if unknown:
            tqdm.write(f"warning: {pair.name}: {unknown} mask pixels have unknown colours and are ignored")
        yield pair.name, image, labels


def read_label_raster(path: str | os.PathLike) -> np.ndarray:
    """Single-band class-id raster (GeoTIFF via GDAL, or a PNG of ids) as H×W uint8."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".vrt"):
        from osgeo import gdal

        gdal.UseExceptions()
        ds = gdal.Open(str(path))  # keep the dataset alive while its band is read (GDAL would crash)
        return ds.GetRasterBand(1).ReadAsArray().astype(np.uint8)
    from PIL import Image

    return np.asarray(Image.open(path))


def read_rgb_raster(path: str | os.PathLike) -> np.ndarray:
    """RGB raster (first three bands of a GeoTIFF via GDAL, or any PIL image) as H×W×3 uint8."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".vrt"):
        from osgeo import gdal

        gdal.UseExceptions()
        ds = gdal.Open(str(path))
        if ds.RasterCount < 3:
            raise ValueError(f"{path} has {ds.RasterCount} band(s); an RGB image needs 3")
        return np.dstack([ds.GetRasterBand(b).ReadAsArray() for b in (1, 2, 3)]).astype(np.uint8)
    from training.isaid import read_image

    return read_image(path)


def evaluate_model(
    model: nn.Module,
    data_root: str | os.PathLike,
    split: str = "val",
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 1,
    tta: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of ``model`` (eval mode) on a split of an iSAID-layout dataset."""
    classes = getattr(model, "classes", None) or ISAID_CLASSES
    check_data_classes(classes, data_root)
    cm = evaluate_arrays(model, iter_split(data_root, split, classes, progress), len(classes),
                         patch, stride, batch_size, tta, device)
    return summarize(cm, classes)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; bad inputs (missing files, unreadable checkpoints, broken pairs) exit 2 with a message."""
    try:
        return _main(argv)
    except (CheckpointError, DataError, ClassTableError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(description="Per-class IoU and mIoU of a FactSeg checkpoint (sliding windows).")
    parser.add_argument("--model", required=True, help="checkpoint (.pt of this project, or the released factseg50.pth)")
    parser.add_argument("--data-root", help="iSAID-layout dataset root ({split}/images, {split}/masks)")
    parser.add_argument("--split", default="val", help="split folder under --data-root (default val)")
    parser.add_argument("--image", help="evaluate one RGB raster instead of a dataset (needs --label)")
    parser.add_argument("--label", help="class-id raster (uint8, 255 = ignore) of --image")
    parser.add_argument("--patch", type=int, default=PATCH_SIZE, help=f"window size (default {PATCH_SIZE})")
    parser.add_argument("--stride", type=int, default=STRIDE, help=f"window stride (default {STRIDE})")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    parser.add_argument("--tta", action="store_true", help="average each window with its left-right and up-down flips")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--out", help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    if bool(args.image) == bool(args.data_root):
        parser.error("give either --data-root or --image with --label")
    if args.image and not args.label:
        parser.error("--image needs --label")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    model = load_model(args.model, device)
    classes = model.classes or ISAID_CLASSES
    start = time.perf_counter()
    if args.image:
        image, labels = read_rgb_raster(args.image), read_label_raster(args.label)
        if image.shape[:2] != labels.shape:
            parser.error(f"--image is {image.shape[1]}×{image.shape[0]} but --label is {labels.shape[1]}×{labels.shape[0]}")
        items: Iterable = [(Path(args.image).stem, image, labels)]
        source = {"image": str(args.image), "label": str(args.label)}
    else:
        check_data_classes(classes, args.data_root)
        items = iter_split(args.data_root, args.split, classes)
        source = {"data_root": str(args.data_root), "split": args.split}
    cm = evaluate_arrays(model, items, len(classes), args.patch, args.stride, args.batch_size, args.tta, device)
    metrics = summarize(cm, classes)
    metrics.update(model=str(args.model), patch=args.patch, stride=args.stride, tta=args.tta,
                   seconds=round(time.perf_counter() - start, 2), **source)
    print(format_table(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        print(f"metrics written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
