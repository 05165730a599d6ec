"""Constants of the FactSeg protocol, in one place: normalisation, window grid, label conventions.

They follow the reference implementation (Junjue-Wang/FactSeg, SimpleCV) so that released weights
see the inputs they were trained on.
"""
from __future__ import annotations

#: RGB mean and std on the 0..255 scale (ImageNet statistics, as in the reference transforms).
MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Sliding-window protocol of the reference iSAID evaluation.
PATCH_SIZE: int = 896
STRIDE: int = 512
#: Largest patch a worker accepts (a 4096² window already needs several GiB of activations).
MAX_PATCH: int = 4096
#: Default side of the independent chunks a raster is tiled into for the worker (rounded down to the
#: stride): larger chunks compute fewer windows twice at their borders, at the cost of bigger messages.
CHUNK_SIZE: int = 4096
#: Windows are zero-padded (after normalisation) to a multiple of this, the encoder's output stride.
SIZE_DIVISOR: int = 32

#: Label value ignored by the losses and written for nodata pixels in class rasters.
IGNORE_INDEX: int = 255
NODATA_CLASS: int = 255

#: Small-object mining keeps this fraction of the hardest valid pixel losses (paper: 10%).
SOM_RATIO: float = 0.1
