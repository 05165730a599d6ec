"""Synthetic mini-iSAID: aerial-looking images with small objects, in the exact iSAID layout and colours.

Why: tests and the demo need data that the project makes itself (no downloads, no licence questions) and that
a small FactSeg learns in minutes on a CPU. Each image has textured land, water and roads, distractors
(houses, trees, parking lots, aprons) labelled background, and objects of seven iSAID classes with their
class-typical shape, size (at ~0.5 m pixels) and colours: small and large vehicles on roads and car parks,
ships on water, storage tanks in groups, planes on aprons, swimming pools beside houses, tennis courts.

Layout written under ``--out``::

    {train,val}/images/P0000.png                      RGB uint8
    {train,val}/masks/P0000_instance_color_RGB.png    iSAID semantic colours (exactly the class table's)
    scene/scene.tif                                   RGB GeoTIFF, EPSG:32633, 0.5 m pixels
    scene/scene_gt.tif                                uint8 class ids (colour table, 255 = nodata)

Everything is a pure function of ``--seed``: image *i* of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from factseg_contract.layout import IMAGES_DIR, MASKS_DIR, image_path, mask_path
from factseg_core.classes import ISAID_CLASSES, ClassInfo
from factseg_core.config import NODATA_CLASS

from .class_table import write_class_table
from .synthetic_painters import CLASS_ID, RGB, paint_scene

#: Class id → RGB colour (unused ids stay black).
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _c in ISAID_CLASSES:
    PALETTE[_c.id] = _c.color

#: The classes the generator draws.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "ship", "large_vehicle", "small_vehicle", "storage_tank", "plane", "swimming_pool", "tennis_court",
)
SPLIT_CODES = {"train": 1, "val": 2, "scene": 3}

#: Georeferencing of the scene: UTM 33N, 0.5 m pixels, upper-left corner near Berlin.
SCENE_EPSG = 32633
SCENE_ORIGIN = (390_000.0, 5_820_000.0)
SCENE_PIXEL = 0.5

__all__ = ["CLASS_ID", "PALETTE", "SCENE_EPSG", "SCENE_ORIGIN", "SCENE_PIXEL", "SPLIT_CODES", "SYNTHETIC_CLASSES",
           "USER_CLASSES", "Relabelling", "generate", "relabelling", "labels_to_colors", "main", "sample_seed", "write_scene", "write_split"]


def generate(seed: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (H×W×3 uint8 RGB image, H×W uint8 class ids), a pure function of its arguments."""
    rng = np.random.default_rng(seed)
    cv = paint_scene(rng, width, height)
    image = cv.image.filter(ImageFilter.GaussianBlur(0.6))
    arr = np.asarray(image).astype(np.float32) + rng.normal(0, 2.5, (height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), np.asarray(cv.labels, dtype=np.uint8).copy()


def sample_seed(seed: int, split: str, index: int) -> int:
    """The seed of image ``index`` of ``split``: independent of how many images are written."""
    return int(np.random.SeedSequence([seed, SPLIT_CODES[split], index]).generate_state(1)[0])


def labels_to_colors(labels: np.ndarray) -> np.ndarray:
    """H×W class ids → H×W×3 iSAID mask colours."""
    return PALETTE[labels]


@dataclass(frozen=True)
class Relabelling:
    """User classes made of synthetic (iSAID) classes: their table, and a lookup from iSAID ids to theirs."""

    classes: tuple[ClassInfo, ...]
    lookup: np.ndarray  # 256 uint8: iSAID id → user id (0 for classes left out; 255 stays 255)
    palette: np.ndarray  # 256×3 uint8: user id → mask colour


def relabelling(groups: Mapping[str, Sequence[str]], colours: Sequence[RGB]) -> Relabelling:
    """The relabelling into ``background`` + one class per group (name → iSAID class names it covers)."""
    classes = [ClassInfo(0, "background", (0, 0, 0))]
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[NODATA_CLASS] = NODATA_CLASS
    palette = np.zeros((256, 3), dtype=np.uint8)
    for user_id, ((name, members), colour) in enumerate(zip(groups.items(), colours), start=1):
        classes.append(ClassInfo(user_id, name, tuple(colour)))  # type: ignore[arg-type]
        palette[user_id] = colour
        for member in members:
            lookup[CLASS_ID[member]] = user_id
    return Relabelling(tuple(classes), lookup, palette)


#: Three user classes of the synthetic scenes (``--user-classes``): what an analyst might label in QGIS.
USER_CLASSES = relabelling({"vehicle": ("small_vehicle", "large_vehicle"), "vessel": ("ship",),
                            "tank": ("storage_tank",)}, ((230, 25, 75), (0, 130, 200), (255, 225, 25)))


def write_split(out: Path, split: str, count: int, size: int, seed: int, relabel: Relabelling | None = None) -> None:
    """``count`` images of ``split`` with their colour masks (iSAID colours, or ``relabel``'s classes)."""
    (out / split / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / split / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, labels = generate(sample_seed(seed, split, index), size, size)
        colours = labels_to_colors(labels) if relabel is None else relabel.palette[relabel.lookup[labels]]
        name = f"P{index:04d}"
        Image.fromarray(image, "RGB").save(image_path(out, split, name))
        Image.fromarray(colours, "RGB").save(mask_path(out, split, name))


def write_scene(out: Path, width: int, height: int, seed: int) -> tuple[Path, Path]:
    """A georeferenced RGB GeoTIFF scene and its uint8 ground truth (colour table and class names embedded)."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    image, labels = generate(sample_seed(seed, "scene", 0), width, height)
    folder = out / "scene"
    folder.mkdir(parents=True, exist_ok=True)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(SCENE_EPSG)
    transform = (SCENE_ORIGIN[0], SCENE_PIXEL, 0.0, SCENE_ORIGIN[1], 0.0, -SCENE_PIXEL)
    options = ["TILED=YES", "COMPRESS=DEFLATE"]
    driver = gdal.GetDriverByName("GTiff")

    scene_path = folder / "scene.tif"
    ds = driver.Create(str(scene_path), width, height, 3, gdal.GDT_Byte, options + ["PHOTOMETRIC=RGB"])
    ds.SetGeoTransform(transform)
    ds.SetProjection(srs.ExportToWkt())
    for band in range(3):
        ds.GetRasterBand(band + 1).WriteArray(image[:, :, band])
    ds = None

    gt_path = folder / "scene_gt.tif"
    ds = driver.Create(str(gt_path), width, height, 1, gdal.GDT_Byte, options)
    ds.SetGeoTransform(transform)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.WriteArray(labels)
    band.SetNoDataValue(NODATA_CLASS)
    table = gdal.ColorTable()
    for c in ISAID_CLASSES:
        table.SetColorEntry(c.id, (*c.color, 255))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetCategoryNames([c.name for c in ISAID_CLASSES])
    ds = None
    return scene_path, gt_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m training.synthetic")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--train", type=int, default=32, help="number of training images (default 32)")
    parser.add_argument("--val", type=int, default=8, help="number of validation images (default 8)")
    parser.add_argument("--size", type=int, default=512, help="side of each square image in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    parser.add_argument("--scene-width", type=int, default=1280, help="GeoTIFF scene width (default 1280)")
    parser.add_argument("--scene-height", type=int, default=1024, help="GeoTIFF scene height (default 1024)")
    parser.add_argument("--no-scene", action="store_true", help="do not write the GeoTIFF scene")
    parser.add_argument("--user-classes", action="store_true", help="label three user classes (vehicle, vessel, "
                        "tank; the rest background) and write classes.json, as an export from QGIS would")
    args = parser.parse_args(argv)
    if args.size < 64 or args.train < 0 or args.val < 0:
        parser.error("--size must be ≥ 64 and --train/--val non-negative")
    relabel = USER_CLASSES if args.user_classes else None
    write_split(args.out, "train", args.train, args.size, args.seed, relabel)
    write_split(args.out, "val", args.val, args.size, args.seed, relabel)
    if relabel is not None:
        write_class_table(args.out, relabel.classes)
    print(f"wrote {args.train} train and {args.val} val images ({args.size}×{args.size}) to {args.out}")
    if not args.no_scene:
        scene, gt = write_scene(args.out, args.scene_width, args.scene_height, args.seed)
        print(f"wrote scene {scene} and ground truth {gt} ({args.scene_width}×{args.scene_height}, EPSG:{SCENE_EPSG})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
