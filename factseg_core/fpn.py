"""Feature pyramid (top-down pathway with lateral 1×1 and output 3×3 convolutions, both with bias).

As in the reference (SimpleCV's FPN, ``conv_with_kaiming_uniform`` without norm or activation); upsampling
in the top-down path is nearest-neighbour ×2, which is why windows are padded to a multiple of 32.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _kaiming_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=True)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    """Maps [C2..C5] to four 256-channel maps [P2..P5] at output strides 4, 8, 16, 32."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_kaiming_conv(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(_kaiming_conv(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        last = self.lateral[-1](features[-1])
        results = [self.output[-1](last)]
        for index in range(len(features) - 2, -1, -1):
            top_down = F.interpolate(last, scale_factor=2.0, mode="nearest")
            last = self.lateral[index](features[index]) + top_down
            results.insert(0, self.output[index](last))
        return results
