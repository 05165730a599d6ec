"""The synthetic mini-iSAID: layout, exact iSAID colours, several object classes, determinism, GeoTIFF scene."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project_paths import REPO_ROOT, VENV_PYTHON

from factseg_core.classes import ISAID_CLASSES
from training import synthetic
from training.isaid import find_pairs, read_labels

ISAID_COLOURS = {c.color for c in ISAID_CLASSES}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".aux.xml")}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    proc = subprocess.run(
        [str(VENV_PYTHON), "-m", "training.synthetic", "--out", str(out), "--train", "3", "--val", "2",
         "--size", "256", "--seed", "7", "--scene-width", "320", "--scene-height", "288"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_layout_is_isaid(synthetic_root: Path) -> None:
    assert [p.name for p in find_pairs(synthetic_root, "train")] == ["P0000", "P0001", "P0002"]
    assert [p.name for p in find_pairs(synthetic_root, "val")] == ["P0000", "P0001"]
    for pair in find_pairs(synthetic_root, "train"):
        with Image.open(pair.image) as im, Image.open(pair.mask) as mask:
            assert im.mode == "RGB" and mask.mode == "RGB" and im.size == mask.size == (256, 256)


def test_masks_use_exactly_isaid_colours_and_several_classes(synthetic_root: Path) -> None:
    seen: set[int] = set()
    for split in ("train", "val"):
        for pair in find_pairs(synthetic_root, split):
            rgb = np.asarray(Image.open(pair.mask)).reshape(-1, 3)
            colours = {tuple(int(v) for v in c) for c in np.unique(rgb, axis=0)}
            assert colours <= ISAID_COLOURS, colours - ISAID_COLOURS
            labels, unknown = read_labels(pair.mask)
            assert unknown == 0
            seen |= set(np.unique(labels).tolist())
    names = {ISAID_CLASSES[i].name for i in seen}
    assert "background" in names
    assert len(names - {"background"}) >= 4, names


def test_generator_draws_every_synthetic_class() -> None:
    seen: set[int] = set()
    for index in range(8):
        _, labels = synthetic.generate(synthetic.sample_seed(0, "train", index), 512, 512)
        seen |= set(np.unique(labels).tolist())
    expected = {synthetic.CLASS_ID[name] for name in synthetic.SYNTHETIC_CLASSES}
    assert expected <= seen, {ISAID_CLASSES[i].name for i in expected - seen}


def test_objects_are_small_and_image_is_textured() -> None:
    image, labels = synthetic.generate(123, 256, 256)
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
    fg = labels != 0
    assert 0.002 < fg.mean() < 0.25  # small objects on a mostly background scene
    assert image[~fg].std() > 10  # a textured, not flat, background
    # the object pixels differ from the background on average (learnable)
    assert np.abs(image[fg].mean(0) - image[~fg].mean(0)).max() > 10


def test_deterministic_from_seed(synthetic_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthetic.main(["--out", str(again), "--train", "3", "--val", "2", "--size", "256", "--seed", "7",
                    "--scene-width", "320", "--scene-height", "288"])
    assert _digest(again) == _digest(synthetic_root)
    other = tmp_path / "other"
    synthetic.main(["--out", str(other), "--train", "1", "--val", "0", "--size", "256", "--seed", "8", "--no-scene"])
    assert _digest(other)["train/images/P0000.png"] != _digest(synthetic_root)["train/images/P0000.png"]


def test_image_independent_of_count(tmp_path: Path) -> None:
    synthetic.main(["--out", str(tmp_path), "--train", "1", "--val", "0", "--size", "128", "--no-scene"])
    first = np.asarray(Image.open(tmp_path / "train/images/P0000.png"))
    image, _ = synthetic.generate(synthetic.sample_seed(0, "train", 0), 128, 128)
    np.testing.assert_array_equal(first, image)


def test_scene_is_georeferenced_with_ground_truth(synthetic_root: Path) -> None:
    from osgeo import gdal, osr

    gdal.UseExceptions()
    scene = gdal.Open(str(synthetic_root / "scene" / "scene.tif"))
    gt = gdal.Open(str(synthetic_root / "scene" / "scene_gt.tif"))
    assert (scene.RasterXSize, scene.RasterYSize, scene.RasterCount) == (320, 288, 3)
    assert (gt.RasterXSize, gt.RasterYSize, gt.RasterCount) == (320, 288, 1)
    assert scene.GetRasterBand(1).DataType == gdal.GDT_Byte and gt.GetRasterBand(1).DataType == gdal.GDT_Byte
    for ds in (scene, gt):
        srs = osr.SpatialReference(wkt=ds.GetProjection())
        srs.AutoIdentifyEPSG()
        assert srs.GetAuthorityCode(None) == "32633"
        origin_x, px, _, origin_y, _, py = ds.GetGeoTransform()
        assert (px, py) == (0.5, -0.5) and (origin_x, origin_y) == synthetic.SCENE_ORIGIN
    labels = gt.GetRasterBand(1).ReadAsArray()
    assert set(np.unique(labels).tolist()) <= {c.id for c in ISAID_CLASSES}
    assert (labels != 0).any()
    table = gt.GetRasterBand(1).GetRasterColorTable()
    assert table.GetColorEntry(9)[:3] == ISAID_CLASSES[9].color
    # the ground truth is the scene's own: object pixels look different from the background
    rgb = np.dstack([scene.GetRasterBand(b).ReadAsArray() for b in (1, 2, 3)])
    assert np.abs(rgb[labels != 0].mean(0) - rgb[labels == 0].mean(0)).max() > 10


def test_cli_rejects_bad_size(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path), "--size", "8"])
