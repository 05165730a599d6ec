"""Shared fixtures: small real models and checkpoints, made here (no downloads), and data locations."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from project_paths import ISAID_SAMPLE


@pytest.fixture(scope="session")
def tiny_model():
    """A FactSeg with a ResNet-18 backbone and deterministic random weights, in eval mode.

    BatchNorm statistics are perturbed so that the network is not a near-identity of its init.
    """
    import torch

    from factseg_core import FactSeg, FactSegConfig

    torch.manual_seed(0)
    model = FactSeg(FactSegConfig(backbone="resnet18"))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.fg_head.bias.copy_(torch.linspace(-1, 1, model.config.num_classes))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """Our checkpoint format holding ``tiny_model``."""
    from factseg_core import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny_r18.pt"
    save_checkpoint(tiny_model, path)
    return path


@pytest.fixture(scope="session")
def isaid_sample() -> Path:
    """The two real iSAID images in ../shared (skips where that folder is absent)."""
    if not (ISAID_SAMPLE / "train" / "images" / "P0005.png").is_file():
        pytest.skip(f"real iSAID sample not found at {ISAID_SAMPLE}")
    return ISAID_SAMPLE


@pytest.fixture(scope="session")
def qgis344_root(tmp_path_factory):
    """The Debian 13 root with QGIS 3.44 (tests/qgis344): built once and cached, or a skip that says why."""
    from qgis344_support import prepare_root

    return prepare_root(tmp_path_factory.getbasetemp())
