"""iSAID semantic-segmentation data: pairs, colour → class id mapping, a patch cache, and a training dataset.

Layout (as distributed, and as the reference code reads it)::

    ROOT/{train,val}/images/NAME.png
    ROOT/{train,val}/masks/NAME_instance_color_RGB.png

iSAID images reach 13,000 px a side: decoding one for every 896-pixel patch would make data loading the
bottleneck. :func:`prepare` therefore decodes each image once, maps its mask to class ids, and writes the
windows of the reference grid (:func:`factseg_core.windows.window_grid`) as small PNG patches into a cache
folder (the official devkit also trains on pre-cut patches). The cache is reused while the sources, patch
and stride are unchanged. :class:`PatchDataset` reads those patches, applies flips and 90° rotations,
normalises exactly as inference does, and pads to the patch size with 255 (ignored) labels.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from factseg_contract import ClassTableError
from factseg_contract.layout import IMAGES_DIR, MASK_SUFFIX, MASKS_DIR
from factseg_core.classes import ISAID_CLASSES, ClassInfo
from factseg_core.config import IGNORE_INDEX, PATCH_SIZE, STRIDE
from factseg_core.sliding import normalize_batch
from factseg_core.windows import window_grid

from .class_table import read_class_table
from .errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")
CACHE_VERSION = 1
#: Rows decoded per step when mapping colours, so a 13,000-px mask does not need int32 codes for all pixels.
_MAP_ROWS = 1024


@dataclass(frozen=True)
class Pair:
    """One image and its colour mask."""

    name: str
    image: Path
    mask: Path


def find_pairs(root: str | os.PathLike, split: str) -> list[Pair]:
    """Image/mask pairs of ``split`` under ``root``, sorted by name; every image needs a mask and vice versa."""
    root = Path(root)
    image_dir, mask_dir = root / split / IMAGES_DIR, root / split / MASKS_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"missing folder {folder} (expected iSAID layout ROOT/{split}/{IMAGES_DIR} and "
                            f"ROOT/{split}/{MASKS_DIR})")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.name[: -len(MASK_SUFFIX)]: p for p in sorted(mask_dir.iterdir()) if p.name.endswith(MASK_SUFFIX)}
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        raise DataError(f"{len(no_mask)} image(s) in {image_dir} have no mask NAME{MASK_SUFFIX} in {mask_dir}: "
                        f"{', '.join(no_mask[:5])}{' …' if len(no_mask) > 5 else ''}")
    if no_image:
        raise DataError(f"{len(no_image)} mask(s) in {mask_dir} have no image in {image_dir}: "
                        f"{', '.join(no_image[:5])}{' …' if len(no_image) > 5 else ''}")
    if not images:
        raise DataError(f"no images in {image_dir}")
    return [Pair(name, images[name], masks[name]) for name in sorted(images)]


def _open_rgb(path: Path) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = None  # iSAID images are legitimately huge (up to ~13,000²)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise DataError(f"cannot decode {path}: {exc}") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H×W×3 uint8 RGB."""
    return _open_rgb(Path(path))


def _color_codes(classes: Sequence[ClassInfo]) -> tuple[np.ndarray, np.ndarray]:
    codes = np.array([(r << 16) | (g << 8) | b for r, g, b in (c.color for c in classes)], dtype=np.int64)
    if len(set(codes.tolist())) != len(codes):
        raise ValueError("class table has duplicate colours")
    order = np.argsort(codes)
    return codes[order], np.array([c.id for c in classes], dtype=np.uint8)[order]


def colors_to_ids(mask_rgb: np.ndarray, classes: Sequence[ClassInfo] = ISAID_CLASSES) -> tuple[np.ndarray, int]:
    """Map an H×W×3 colour mask to H×W uint8 class ids; colours not in ``classes`` become 255.

    Returns the ids and the number of pixels with an unknown colour (callers warn about it).
    """
    if mask_rgb.ndim != 3 or mask_rgb.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 colour mask, got shape {mask_rgb.shape}")
    sorted_codes, sorted_ids = _color_codes(classes)
    out = np.empty(mask_rgb.shape[:2], dtype=np.uint8)
    unknown = 0
    for y in range(0, mask_rgb.shape[0], _MAP_ROWS):
        rgb = mask_rgb[y : y + _MAP_ROWS].astype(np.int32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pos = np.clip(np.searchsorted(sorted_codes, code), 0, len(sorted_codes) - 1)
        hit = sorted_codes[pos] == code
        out[y : y + _MAP_ROWS] = np.where(hit, sorted_ids[pos], IGNORE_INDEX)
        unknown += int(hit.size - np.count_nonzero(hit))
    return out, unknown


def read_labels(path: str | os.PathLike, classes: Sequence[ClassInfo] = ISAID_CLASSES) -> tuple[np.ndarray, int]:
    """Class ids of an iSAID colour mask file, and its count of unknown-colour pixels."""
    return colors_to_ids(_open_rgb(Path(path)), classes)


def load_pair(pair: Pair, classes: Sequence[ClassInfo] = ISAID_CLASSES) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a pair: (image H×W×3, labels H×W, unknown-colour pixel count); sizes must agree."""
    image = read_image(pair.image)
    labels, unknown = read_labels(pair.mask, classes)
    if image.shape[:2] != labels.shape:
        raise DataError(f"{pair.name}: image {pair.image} is {image.shape[1]}×{image.shape[0]} but mask "
                        f"{pair.mask} is {labels.shape[1]}×{labels.shape[0]}")
    return image, labels, unknown


# --- patch cache ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchRecord:
    """One cached window: where its files are (relative to the cache folder) and where it came from."""

    image: str
    label: str
    source: str
    y0: int
    x0: int
    height: int
    width: int


def _source_signature(pairs: Sequence[Pair], classes: Sequence[ClassInfo], patch: int, stride: int) -> str:
    items: list[Any] = [CACHE_VERSION, patch, stride, [c.to_dict() for c in classes]]
    for p in pairs:
        for f in (p.image, p.mask):
            st = f.stat()
            items.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _cut_pair(args: tuple[Pair, Path, tuple[ClassInfo, ...], int, int]) -> tuple[list[dict], int]:
    pair, folder, classes, patch, stride = args
    image, labels, unknown = load_pair(pair, classes)
    records = []
    for win in window_grid(labels.shape[0], labels.shape[1], patch, stride):
        stem = f"{pair.name}_{win.y0}_{win.x0}"
        Image.fromarray(image[win.y0 : win.y1, win.x0 : win.x1]).save(folder / IMAGES_DIR / f"{stem}.png", compress_level=1)
        Image.fromarray(labels[win.y0 : win.y1, win.x0 : win.x1]).save(folder / "labels" / f"{stem}.png", compress_level=1)
        records.append(asdict(PatchRecord(f"{IMAGES_DIR}/{stem}.png", f"labels/{stem}.png", pair.name,
                                          win.y0, win.x0, win.height, win.width)))
    return records, unknown


def _warn_unknown(unknown: dict[str, int], total: int, split: str) -> None:
    if unknown:
        warnings.warn(f"{sum(unknown.values())} mask pixels in {len(unknown)} of {total} {split} masks have "
                      f"colours outside the class table and are ignored (label 255): "
                      f"{', '.join(f'{k}: {v}' for k, v in list(unknown.items())[:5])}", stacklevel=3)


def cache_folder(cache_dir: str | os.PathLike, split: str, patch: int, stride: int) -> Path:
    """Where :func:`prepare` puts the patches of ``split`` cut with ``patch``/``stride``."""
    return Path(cache_dir) / f"{split}_p{patch}_s{stride}"


def prepare(
    root: str | os.PathLike,
    split: str,
    cache_dir: str | os.PathLike,
    patch: int,
    stride: int,
    classes: Sequence[ClassInfo] = ISAID_CLASSES,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Cut every image of ``split`` into windows of the reference grid once; return the cache folder.

    The folder ``cache_dir/{split}_p{patch}_s{stride}`` holds ``images/*.png``, ``labels/*.png`` (class ids)
    and ``manifest.json``. An up-to-date cache (same files, sizes, mtimes, classes, patch, stride) is reused.
    Pixels with colours outside the class table are labelled 255 and reported in a warning.
    """
    pairs = find_pairs(root, split)
    classes = tuple(classes)
    folder = cache_folder(cache_dir, split, patch, stride)
    manifest_path = folder / "manifest.json"
    signature = _source_signature(pairs, classes, patch, stride)
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest = {}
        if manifest.get("signature") == signature:
            _warn_unknown(manifest["unknown_pixels"], len(pairs), split)
            return folder
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    jobs = [(p, folder, classes, patch, stride) for p in pairs]
    bar = tqdm(total=len(jobs), desc=f"preparing {split} patches", unit="image", disable=not progress)
    results: list[tuple[list[dict], int]] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_cut_pair, jobs):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_cut_pair(job))
            bar.update()
    bar.close()
    records = [r for recs, _ in results for r in recs]
    unknown = {p.name: u for p, (_, u) in zip(pairs, results) if u}
    _warn_unknown(unknown, len(pairs), split)
    manifest = {"signature": signature, "patch": patch, "stride": stride, "split": split,
                "classes": [c.to_dict() for c in classes], "unknown_pixels": unknown, "patches": records}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, manifest_path)
    return folder


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DataError(f"no patch cache at {folder}: run prepare() first")
    return json.loads(path.read_text())


# --- dataset --------------------------------------------------------------------------------------------------

def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip, vertical flip and rotation by k·90° (the same for image and labels)."""
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.5:
        image, labels = image[::-1], labels[::-1]
    k = int(rng.integers(4))
    if k:
        image, labels = np.rot90(image, k), np.rot90(labels, k)
    return image, labels


def pad_to(image: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a normalised 3×h×w image with 0 and its h×w labels with 255 at the bottom/right to size×size."""
    h, w = labels.shape
    if h > size or w > size:
        raise ValueError(f"patch {w}×{h} is larger than the crop size {size}")
    if (h, w) == (size, size):
        return image, labels
    return F.pad(image, (0, size - w, 0, size - h)), F.pad(labels, (0, size - w, 0, size - h), value=IGNORE_INDEX)


class PatchDataset(Dataset):
    """Patches of a prepared cache folder as (image 3×P×P float32, labels P×P int64) tensors.

    An item may be requested as ``index`` or ``(index, seed)``: the seed drives the augmentation, so a sampler
    that derives seeds from the iteration number makes every batch reproducible (exact resume, any number of
    loader workers).
    """

    def __init__(self, folder: str | os.PathLike, augmentation: bool = True, seed: int = 0) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.patch = int(manifest["patch"])
        self.records = [PatchRecord(**r) for r in manifest["patches"]]
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached patch as (h×w×3 uint8 image, h×w uint8 labels), before augmentation."""
        rec = self.records[index]
        image = np.array(Image.open(self.folder / rec.image).convert("RGB"))  # writable, for torch
        labels = np.array(Image.open(self.folder / rec.label))
        if image.shape[:2] != labels.shape:
            raise DataError(f"cache {self.folder} is corrupt: {rec.image} and {rec.label} differ in size")
        return image, labels

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, self.seed * 1_000_003 + item)
        image, labels = self.load(index)
        if self.augmentation:
            image, labels = augment(image, labels, np.random.default_rng(seed))
        # the same normalisation as inference (factseg_core.sliding.normalize_batch)
        image_t = normalize_batch(torch.from_numpy(np.ascontiguousarray(image))[None])[0]
        return pad_to(image_t, torch.from_numpy(labels.astype(np.int64)), self.patch)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.isaid --data-root DIR --cache-dir DIR [--split train --patch 896 --stride 512]``:
    cut the patch cache ahead of training (useful before a multi-GPU run, whose other ranks would wait), with the
    data root's classes.json when it has one."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.isaid", description=main.__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--cache-dir", required=True, help="train.py uses WORK_DIR/cache unless data.cache_dir is set")
    parser.add_argument("--split", default="train")
    parser.add_argument("--patch", type=int, default=PATCH_SIZE)
    parser.add_argument("--stride", type=int, default=STRIDE)
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images in parallel")
    args = parser.parse_args(argv)
    try:
        classes = read_class_table(args.data_root) or ISAID_CLASSES
        folder = prepare(args.data_root, args.split, args.cache_dir, args.patch, args.stride, classes, args.workers)
    except (DataError, ClassTableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(read_manifest(folder)['patches'])} patches in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
