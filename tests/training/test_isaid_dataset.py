"""iSAID reader: colour mapping, pairing errors, the patch cache (windows, padding), augmentation, real masks."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factseg_core.classes import ISAID_CLASSES
from factseg_core.config import IGNORE_INDEX, MEAN, STD
from factseg_core.windows import window_grid
from training.errors import DataError
from training.isaid import (
    PatchDataset,
    augment,
    colors_to_ids,
    find_pairs,
    load_pair,
    pad_to,
    prepare,
    read_labels,
)

COLOR = {c.name: c.color for c in ISAID_CLASSES}
ID = {c.name: c.id for c in ISAID_CLASSES}


def _write_pair(root: Path, split: str, name: str, image: np.ndarray, mask_rgb: np.ndarray) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(root / split / "images" / f"{name}.png")
    Image.fromarray(mask_rgb, "RGB").save(root / split / "masks" / f"{name}_instance_color_RGB.png")


def _position_coded(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixel values encode their position, and class ids derived from the same position,
    so that any crop, flip or rotation can be checked for image/label consistency."""
    yy, xx = np.mgrid[0:height, 0:width]
    ids = ((yy // 8 + xx // 8) % 16).astype(np.uint8)
    image = np.stack([ids * 10, (yy % 256), (xx % 256)], axis=-1).astype(np.uint8)
    return image, ids


def test_colour_mapping_of_a_hand_made_mask() -> None:
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 0] = COLOR["ship"]
    mask[0, 1] = COLOR["storage_tank"]  # (0, 63, 63): storage tank, not roundabout (devkit naming)
    mask[0, 2] = COLOR["roundabout"]
    mask[1, 0] = COLOR["small_vehicle"]
    mask[1, 1] = (1, 2, 3)  # not an iSAID colour
    mask[1, 2] = COLOR["harbor"]
    ids, unknown = colors_to_ids(mask)
    assert ids.tolist() == [[ID["ship"], ID["storage_tank"], ID["roundabout"]],
                            [ID["small_vehicle"], IGNORE_INDEX, ID["harbor"]]]
    assert ids.dtype == np.uint8 and unknown == 1


def test_every_class_colour_round_trips() -> None:
    mask = np.array([[c.color for c in ISAID_CLASSES]], np.uint8)
    ids, unknown = colors_to_ids(mask)
    assert ids.tolist() == [[c.id for c in ISAID_CLASSES]] and unknown == 0


def test_colour_mapping_handles_many_rows() -> None:
    mask = np.zeros((2100, 3, 3), np.uint8)  # more rows than one mapping block
    mask[-1, -1] = COLOR["plane"]
    mask[1500, 0] = (9, 9, 9)
    ids, unknown = colors_to_ids(mask)
    assert ids[-1, -1] == ID["plane"] and ids[1500, 0] == IGNORE_INDEX and unknown == 1 and (ids[:1000] == 0).all()


def test_find_pairs_and_clear_errors(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    _write_pair(tmp_path, "train", "P0001", img, img)
    _write_pair(tmp_path, "train", "P0002", img, img)
    assert [p.name for p in find_pairs(tmp_path, "train")] == ["P0001", "P0002"]

    with pytest.raises(DataError, match="missing folder .*val"):
        find_pairs(tmp_path, "val")
    (tmp_path / "train" / "masks" / "P0002_instance_color_RGB.png").unlink()
    with pytest.raises(DataError, match="have no mask.*P0002"):
        find_pairs(tmp_path, "train")
    _write_pair(tmp_path, "train", "P0002", img, img)
    Image.fromarray(img).save(tmp_path / "train" / "masks" / "P0003_instance_color_RGB.png")
    with pytest.raises(DataError, match="have no image.*P0003"):
        find_pairs(tmp_path, "train")


def test_mismatched_sizes_error(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", "P0001", np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11, 3), np.uint8))
    pair = find_pairs(tmp_path, "train")[0]
    with pytest.raises(DataError, match=r"P0001: image .* is 12×10 but mask .* is 11×10"):
        load_pair(pair)
    with pytest.raises(DataError, match="12×10 but mask"):
        prepare(tmp_path, "train", tmp_path / "cache", 64, 32, progress=False)


def test_undecodable_file_errors(tmp_path: Path) -> None:
    _write_pair(tmp_path, "train", "P0001", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "images" / "P0001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode .*P0001.png"):
        load_pair(find_pairs(tmp_path, "train")[0])


@pytest.fixture()
def coded_root(tmp_path: Path) -> Path:
    image, ids = _position_coded(200, 300)
    colours = np.array([c.color for c in ISAID_CLASSES], np.uint8)
    _write_pair(tmp_path, "train", "A", image, colours[ids])
    small_img, small_ids = _position_coded(40, 50)  # smaller than the patch: one padded window
    _write_pair(tmp_path, "train", "B", small_img, colours[small_ids])
    return tmp_path


def test_prepare_cuts_the_reference_window_grid(coded_root: Path, tmp_path: Path) -> None:
    folder = prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    records = [r for r in manifest["patches"] if r["source"] == "A"]
    grid = window_grid(200, 300, 128, 96)
    assert [(r["y0"], r["x0"], r["y0"] + r["height"], r["x0"] + r["width"]) for r in records] == \
        [(w.y0, w.x0, w.y1, w.x1) for w in grid]
    image, ids = _position_coded(200, 300)
    ds = PatchDataset(folder, augmentation=False)
    for index, rec in enumerate(ds.records):
        if rec.source != "A":
            continue
        patch_img, patch_lab = ds.load(index)
        np.testing.assert_array_equal(patch_img, image[rec.y0:rec.y0 + rec.height, rec.x0:rec.x0 + rec.width])
        np.testing.assert_array_equal(patch_lab, ids[rec.y0:rec.y0 + rec.height, rec.x0:rec.x0 + rec.width])
    assert manifest["unknown_pixels"] == {}


def test_dataset_normalises_and_pads_with_ignore(coded_root: Path, tmp_path: Path) -> None:
    folder = prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    ds = PatchDataset(folder, augmentation=False)
    index = next(i for i, r in enumerate(ds.records) if r.source == "B")
    image, labels = ds[index]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert labels.shape == (128, 128) and labels.dtype == torch.int64
    raw_img, raw_ids = _position_coded(40, 50)
    expected = (raw_img.astype(np.float32) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(image[:, :40, :50].numpy(), expected.transpose(2, 0, 1), rtol=1e-6)
    assert (image[:, 40:, :] == 0).all() and (image[:, :, 50:] == 0).all()
    np.testing.assert_array_equal(labels[:40, :50].numpy(), raw_ids)
    assert (labels[40:, :] == IGNORE_INDEX).all() and (labels[:, 50:] == IGNORE_INDEX).all()


def test_pad_to_rejects_oversized() -> None:
    with pytest.raises(ValueError, match="larger than the crop"):
        pad_to(torch.zeros(3, 10, 10), torch.zeros(10, 10, dtype=torch.int64), 8)


def test_augmentation_moves_image_and_labels_together() -> None:
    image, ids = _position_coded(64, 48)
    seen = set()
    for seed in range(40):
        out_img, out_lab = augment(image, ids, np.random.default_rng(seed))
        # the label of every pixel is still the one encoded in its image value
        np.testing.assert_array_equal(out_img[..., 0], out_lab.astype(np.uint8) * 10)
        # and the result is one of the 8 dihedral transforms of the original
        seen.add((out_img.shape, out_img[0, 0].tobytes(), out_img[-1, 0].tobytes()))
    assert len(seen) == 8  # flips × rotations all occur


def test_dataset_augmentation_is_seeded(coded_root: Path, tmp_path: Path) -> None:
    folder = prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    ds = PatchDataset(folder, augmentation=True)
    a_img, a_lab = ds[(0, 1234)]
    b_img, b_lab = ds[(0, 1234)]
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    variants = {ds[(0, s)][1].numpy().tobytes() for s in range(12)}
    assert len(variants) > 1


def test_cache_is_reused_and_rebuilt_when_sources_change(coded_root: Path, tmp_path: Path) -> None:
    folder = prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    again = prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    assert again == folder and (folder / "manifest.json").stat().st_mtime_ns == stamp
    mask = coded_root / "train" / "masks" / "B_instance_color_RGB.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[0, 0] = (5, 5, 5)  # an unknown colour
    Image.fromarray(rgb).save(mask)
    os.utime(mask, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.warns(UserWarning, match="1 mask pixels in 1 of 2 train masks have colours outside"):
        prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["unknown_pixels"] == {"B": 1}
    rebuilt = (folder / "manifest.json").stat().st_mtime_ns
    with pytest.warns(UserWarning, match="1 mask pixels"):  # reusing the cache still tells
        prepare(coded_root, "train", tmp_path / "cache", patch=128, stride=96, progress=False)
    assert (folder / "manifest.json").stat().st_mtime_ns == rebuilt
    ds = PatchDataset(folder, augmentation=False)
    index = next(i for i, r in enumerate(ds.records) if r.source == "B")
    assert ds[index][1][0, 0] == IGNORE_INDEX


def test_real_isaid_masks_map_without_unknown_colours(isaid_sample: Path) -> None:
    expected = {"P0005": {"small_vehicle", "large_vehicle"}, "P0003": {"small_vehicle", "large_vehicle", "storage_tank"}}
    for split in ("train", "val"):
        for pair in find_pairs(isaid_sample, split):
            labels, unknown = read_labels(pair.mask)
            assert unknown == 0, f"{pair.name}: {unknown} unknown pixels"
            present = {ISAID_CLASSES[i].name for i in np.unique(labels)} - {"background"}
            assert present == expected[pair.name]


def test_real_isaid_prepare_writes_into_the_cache_only(isaid_sample: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown-colour warning on real data
        folder = prepare(isaid_sample, "train", tmp_path / "cache", patch=512, stride=384, progress=False)
    ds = PatchDataset(folder, augmentation=False)
    assert len(ds) == len(window_grid(884, 977, 512, 384)) == 6
    image, labels = ds[0]
    assert image.shape == (3, 512, 512) and set(torch.unique(labels).tolist()) <= {0, ID["small_vehicle"], ID["large_vehicle"]}


def test_prepare_command_line(coded_root: Path, tmp_path: Path, capsys) -> None:
    from training.isaid import main

    assert main(["--data-root", str(coded_root), "--cache-dir", str(tmp_path / "c"), "--patch", "128",
                 "--stride", "96"]) == 0
    expected = len(window_grid(200, 300, 128, 96)) + 1
    assert f"{expected} patches in" in capsys.readouterr().out
    assert main(["--data-root", str(tmp_path / "none"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "missing folder" in capsys.readouterr().err
