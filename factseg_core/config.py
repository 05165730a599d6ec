"""Constants of the FactSeg network: normalisation, padding, small-object mining (and the contract's window grid).

They follow the reference implementation (Junjue-Wang/FactSeg, SimpleCV) so that released weights
see the inputs they were trained on.
"""
from __future__ import annotations

# The window grid, chunk and nodata/ignore values are the shared contract's (QGIS, the worker and training agree
# on them); factseg_core modules import them from here.
from factseg_contract.limits import BATCH_SIZE, CHUNK_SIZE, IGNORE_INDEX, MAX_PATCH, NODATA_CLASS, PATCH_SIZE, STRIDE

#: RGB mean and std on the 0..255 scale (ImageNet statistics, as in the reference transforms).
MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Windows are zero-padded (after normalisation) to a multiple of this, the encoder's output stride.
SIZE_DIVISOR: int = 32

#: Key of the JSON metadata entry written into exported ONNX files (see :mod:`factseg_core.onnx_export`).
ONNX_METADATA_KEY: str = "factseg"

#: Small-object mining keeps this fraction of the hardest valid pixel losses (paper: 10%).
SOM_RATIO: float = 0.1

__all__ = ["BATCH_SIZE", "CHUNK_SIZE", "IGNORE_INDEX", "MAX_PATCH", "MEAN", "NODATA_CLASS", "ONNX_METADATA_KEY", "PATCH_SIZE", "SIZE_DIVISOR", "SOM_RATIO",
           "STD", "STRIDE"]
