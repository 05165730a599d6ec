"""Asymmetric decoder: brings every pyramid level to output stride 4 and averages them.

Level at stride s gets log2(s/4) conv-BN-ReLU-upsample×2 layers (one conv without upsampling for the
stride-4 level); the four results are summed and divided by 4, as in the reference's AssymetricDecoder.
Upsampling is bilinear with align_corners=True (nn.UpsamplingBilinear2d in the reference).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DecoderLayer(nn.Module):
    """3×3 conv (no bias) → BatchNorm → ReLU → optional bilinear ×2 (align_corners=True)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class AsymmetricDecoder(nn.Module):
    """Fuses [P2..P5] into one map with ``out_channels`` at output stride 4."""

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 128,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        out_stride: int = 4,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        for stride in in_strides:
            num_upsample = int(math.log2(stride)) - int(math.log2(out_stride))
            num_layers = max(num_upsample, 1)
            self.stages.append(
                nn.Sequential(
                    *(
                        DecoderLayer(in_channels if i == 0 else out_channels, out_channels, num_upsample != 0)
                        for i in range(num_layers)
                    )
                )
            )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        total = self.stages[0](features[0])
        for stage, feature in zip(self.stages[1:], features[1:]):
            total = total + stage(feature)
        return total / 4.0
