"""The shared contract of FactSeg for QGIS: every value and rule that QGIS, the worker and training must agree on.

Pure standard library (no numpy, torch, GDAL or zmq), so every room may import it: ``qgis_plugin``,
``worker.client`` and ``worker.io`` inside QGIS, ``worker.server``/``worker.batch`` and ``factseg_core`` in the
worker's process, ``training``. Each value is defined here and nowhere else (``tests/test_code_rules.py``):

- :mod:`.limits`: defaults and limits of a segmentation run (patch, stride, chunk, max patch, nodata, batch,
  default endpoint);
- :mod:`.layout`: the training-data layout (folders, file names, the mask colour of "ignore");
- :mod:`.class_table`: the class table (``[{id, name, color}, ...]``) parser and validator.

Where it lies: a top-level package beside ``worker`` and ``factseg_core``. The QGIS plugin zip vendors it beside
``worker`` (``factseg/factseg_contract``); ``worker`` reaches it through :mod:`worker.contract`, which finds
either copy without any ``sys.path`` change.
"""
from .class_table import ClassTableError, check_class_table, check_dataset_table
from .layout import (
    AUTO_PRESET,
    CLASSES_FILE,
    EXPORT_FILE,
    IGNORE_COLOR,
    IMAGE_SUFFIX,
    IMAGES_DIR,
    MASK_SUFFIX,
    MASKS_DIR,
    SPLITS,
    TRAINING_PRESETS,
    image_path,
    mask_path,
)
from .limits import (
    BATCH_SIZE,
    CHUNK_SIZE,
    DEFAULT_ENDPOINT,
    IGNORE_INDEX,
    MAX_PATCH,
    NODATA_CLASS,
    PATCH_SIZE,
    STRIDE,
)

__all__ = [
    "TRAINING_PRESETS",
    "AUTO_PRESET",
    "BATCH_SIZE",
    "CHUNK_SIZE",
    "CLASSES_FILE",
    "DEFAULT_ENDPOINT",
    "EXPORT_FILE",
    "IGNORE_COLOR",
    "IGNORE_INDEX",
    "IMAGES_DIR",
    "IMAGE_SUFFIX",
    "MASKS_DIR",
    "MASK_SUFFIX",
    "MAX_PATCH",
    "NODATA_CLASS",
    "PATCH_SIZE",
    "SPLITS",
    "STRIDE",
    "ClassTableError",
    "check_class_table",
    "check_dataset_table",
    "image_path",
    "mask_path",
]
