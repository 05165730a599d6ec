"""The training-data layout: what ``factseg:export_training_data`` and ``training.synthetic`` write, and what the
trainer, the evaluator and a worker's training job read (iSAID's own layout plus a class table)::

    ROOT/classes.json                                   the class table (see :mod:`.class_table`); none: iSAID
    ROOT/export.json                                    an export's manifest (source, grid, tiles)
    ROOT/{train,val}/images/NAME.png                    RGB image patches
    ROOT/{train,val}/masks/NAME_instance_color_RGB.png  class colours; IGNORE_COLOR where pixels are ignored
"""
from __future__ import annotations

from pathlib import Path

CLASSES_FILE: str = "classes.json"
EXPORT_FILE: str = "export.json"
SPLITS: tuple[str, str] = ("train", "val")
IMAGES_DIR: str = "images"
MASKS_DIR: str = "masks"
IMAGE_SUFFIX: str = ".png"
#: iSAID's semantic-mask file name: ``NAME`` + this.
MASK_SUFFIX: str = "_instance_color_RGB.png"
#: The mask colour of "ignore": a colour no class has; the reader maps every colour outside the class table to
#: the ignore label, and the export paints the outside of the labelled area in it.
IGNORE_COLOR: tuple[int, int, int] = (255, 255, 255)


def image_path(root: str | Path, split: str, name: str) -> Path:
    """``ROOT/SPLIT/images/NAME.png``."""
    return Path(root) / split / IMAGES_DIR / f"{name}{IMAGE_SUFFIX}"


def mask_path(root: str | Path, split: str, name: str) -> Path:
    """``ROOT/SPLIT/masks/NAME_instance_color_RGB.png``."""
    return Path(root) / split / MASKS_DIR / f"{name}{MASK_SUFFIX}"

#: Fine-tuning recipes by name (files of ``training/configs/``, shipped with every worker and the plugin zip):
#: only the name crosses the wire; ``auto`` is ``gpu`` on CUDA and ``cpu`` elsewhere.
TRAINING_PRESETS: dict[str, str] = {"cpu": "finetune_cpu.yaml", "gpu": "finetune.yaml"}
AUTO_PRESET: str = "auto"
