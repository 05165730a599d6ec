"""FactSeg (Ma, Wang, Zhong, Zheng, IEEE TGRS 2021): foreground activation-driven small object segmentation.

A ResNet encoder feeds two FPNs: the foreground branch (C classes) and the binary, foreground-activation
branch (object vs background). Each has an asymmetric decoder (128 channels, output stride 4) and a 1×1
head; logits are upsampled ×4 bilinearly (align_corners=True). In training the model returns both logits
for the joint CP loss; in eval it returns CP-fused class probabilities.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .classes import ISAID_CLASSES, ClassInfo
from .decoder import AsymmetricDecoder
from .fpn import FPN
from .fusion import cp_fusion
from .resnet import ResNetEncoder


@dataclass(frozen=True)
class FactSegConfig:
    """Architecture hyper-parameters; stored in checkpoints so a model is rebuilt exactly."""

    backbone: str = "resnet50"
    num_classes: int = 16
    fpn_channels: int = 256
    decoder_channels: int = 128

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactSegConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FactSeg config keys: {sorted(unknown)}")
        return cls(**data)


class FactSeg(nn.Module):
    """FactSeg network. Input: normalised N×3×H×W with H, W multiples of 32.

    ``model.train()``: ``forward`` returns ``(fg_logits N×C×H×W, bi_logits N×1×H×W)``.
    ``model.eval()``: ``forward`` returns CP-fused probabilities N×C×H×W summing to 1 over C.
    """

    def __init__(self, config: FactSegConfig | None = None, classes: tuple[ClassInfo, ...] | None = None) -> None:
        super().__init__()
        self.config = config or FactSegConfig()
        self.classes = classes if classes is not None else (ISAID_CLASSES if self.config.num_classes == 16 else None)
        if self.classes is not None and len(self.classes) != self.config.num_classes:
            raise ValueError(f"class table has {len(self.classes)} entries, model has {self.config.num_classes}")
        cfg = self.config
        self.encoder = ResNetEncoder(cfg.backbone)
        self.fg_fpn = FPN(self.encoder.out_channels, cfg.fpn_channels)
        self.bi_fpn = FPN(self.encoder.out_channels, cfg.fpn_channels)
        self.fg_decoder = AsymmetricDecoder(cfg.fpn_channels, cfg.decoder_channels)
        self.bi_decoder = AsymmetricDecoder(cfg.fpn_channels, cfg.decoder_channels)
        self.fg_head = nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1)
        self.bi_head = nn.Conv2d(cfg.decoder_channels, 1, 1)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and binary logits at input resolution, whatever the mode."""
        features = self.encoder(x)
        fg = self.fg_head(self.fg_decoder(self.fg_fpn(features)))
        bi = self.bi_head(self.bi_decoder(self.bi_fpn(features)))
        fg = F.interpolate(fg, scale_factor=4.0, mode="bilinear", align_corners=True)
        bi = F.interpolate(bi, scale_factor=4.0, mode="bilinear", align_corners=True)
        return fg, bi

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        fg, bi = self.logits(x)
        if self.training:
            return fg, bi
        return cp_fusion(fg, bi)
