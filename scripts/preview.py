"""A side-by-side PNG preview (image | ground truth | prediction) with a class legend, for the demo."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NODATA = 255
BACKGROUND = 0


def colorize(class_ids: np.ndarray, classes: Sequence[dict], backdrop: np.ndarray | None = None) -> np.ndarray:
    """H×W class ids → H×W×3 RGB with the class colours (nodata as mid grey).

    iSAID's colours are dark; with ``backdrop`` (the RGB image) background pixels show a faint grey copy of
    it instead of black, so objects can be read in context.
    """
    palette = np.full((256, 3), 128, dtype=np.uint8)
    for item in classes:
        palette[int(item["id"])] = item["color"]
    rgb = palette[class_ids]
    if backdrop is not None:
        grey = (backdrop.astype(np.float32).mean(axis=2, keepdims=True) * 0.35 + 150).astype(np.uint8)
        rgb = np.where((class_ids == BACKGROUND)[..., None], grey, rgb)
    return rgb


def _legend(classes: Sequence[dict], present: set[int], width: int) -> Image.Image:
    font = ImageFont.load_default()
    shown = [c for c in classes if int(c["id"]) in present]
    row_h, col_w = 18, 190
    cols = max(1, width // col_w)
    rows = -(-len(shown) // cols)
    legend = Image.new("RGB", (width, rows * row_h + 8), "white")
    draw = ImageDraw.Draw(legend)
    for i, item in enumerate(shown):
        x, y = 6 + (i % cols) * col_w, 4 + (i // cols) * row_h
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(item["color"]), outline="black")
        draw.text((x + 18, y + 2), f"{item['id']} {item['name']}", fill="black", font=font)
    return legend


def write_preview(
    path: str | Path, image_rgb: np.ndarray, truth: np.ndarray, prediction: np.ndarray, classes: Sequence[dict],
    max_side: int = 640,
) -> Path:
    """Save image | ground truth | prediction side by side (downscaled to ``max_side``) with titles and legend."""
    scale = min(1.0, max_side / max(image_rgb.shape[:2]))
    size = (max(1, round(image_rgb.shape[1] * scale)), max(1, round(image_rgb.shape[0] * scale)))
    panels = [
        Image.fromarray(image_rgb).resize(size, Image.BILINEAR),
        Image.fromarray(colorize(truth, classes, image_rgb)).resize(size, Image.NEAREST),
        Image.fromarray(colorize(prediction, classes, image_rgb)).resize(size, Image.NEAREST),
    ]
    gap, title_h = 8, 20
    width = 3 * size[0] + 4 * gap
    present = set(np.unique(truth).tolist()) | set(np.unique(prediction).tolist())
    legend = _legend(classes, present, width)
    canvas = Image.new("RGB", (width, title_h + size[1] + gap + legend.height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, ("image", "ground truth", "prediction (FactSeg)"))):
        x = gap + i * (size[0] + gap)
        canvas.paste(panel, (x, title_h))
        draw.text((x, 4), title, fill="black", font=ImageFont.load_default())
    canvas.paste(legend, (0, title_h + size[1] + gap))
    path = Path(path)
    canvas.save(path)
    return path
