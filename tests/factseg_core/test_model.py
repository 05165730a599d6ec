"""FactSeg network: structure, shapes, CP fusion and the joint loss against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from factseg_core import FactSeg, FactSegConfig
from factseg_core.classes import ISAID_CLASSES, classes_from_dicts, classes_to_dicts
from factseg_core.fusion import cp_fusion, cp_log_prob
from factseg_core.losses import joint_loss, joint_pixel_losses, small_object_mining


def test_factseg_r50_size_is_pinned():
    model = FactSeg()
    assert sum(p.numel() for p in model.parameters()) == 33_446_609  # 33.45 M, as the paper's R50 model
    assert len(model.state_dict()) == 438  # the reference checkpoint's entry count


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet101"])
def test_lighter_and_deeper_backbones_build(backbone):
    model = FactSeg(FactSegConfig(backbone=backbone)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 16, 64, 64)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        FactSeg(FactSegConfig(backbone="resnet7"))


def test_eval_returns_probabilities_and_train_returns_logits(tiny_model):
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        probs = tiny_model(x)
    assert probs.shape == (2, 16, 96, 128)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 96, 128), atol=1e-5, rtol=0)
    model = FactSeg(FactSegConfig(backbone="resnet18")).train()
    fg, bi = model(x)
    assert fg.shape == (2, 16, 96, 128) and bi.shape == (2, 1, 96, 128)


def test_cp_fusion_matches_hand_computed_values():
    # softmax([0, ln 2]) = [1/3, 2/3]; sigmoid(ln 3) = 3/4.
    # p0 ∝ 1/3 · 1/4 = 1/12, p1 ∝ 2/3 · 3/4 = 1/2  →  p = [1/7, 6/7].
    fg = torch.tensor([0.0, math.log(2.0)]).view(1, 2, 1, 1)
    bi = torch.tensor([math.log(3.0)]).view(1, 1, 1, 1)
    probs = cp_fusion(fg, bi).flatten()
    torch.testing.assert_close(probs, torch.tensor([1 / 7, 6 / 7]))
    torch.testing.assert_close(cp_log_prob(fg, bi).exp().flatten(), torch.tensor([1 / 7, 6 / 7]))


def test_cp_fusion_is_the_reference_formula_on_random_logits():
    torch.manual_seed(1)
    fg, bi = torch.randn(2, 5, 4, 4) * 3, torch.randn(2, 1, 4, 4) * 3
    cls_prob = torch.softmax(fg, dim=1)
    fgp = torch.sigmoid(bi)
    joint = cls_prob.clone()
    joint[:, 0] = cls_prob[:, 0] * (1 - fgp[:, 0])
    joint[:, 1:] = cls_prob[:, 1:] * fgp
    expected = joint / joint.sum(dim=1, keepdim=True)
    torch.testing.assert_close(cp_fusion(fg, bi), expected)
    torch.testing.assert_close(cp_log_prob(fg, bi), expected.log(), atol=1e-5, rtol=1e-5)


def test_joint_loss_is_nll_of_cp_probability():
    fg = torch.tensor([0.0, math.log(2.0)]).view(1, 2, 1, 1).repeat(1, 1, 1, 3)
    bi = torch.full((1, 1, 1, 3), math.log(3.0))
    target = torch.tensor([[[1, 0, 255]]])
    losses = joint_pixel_losses(fg, bi, target)
    torch.testing.assert_close(losses.flatten(), torch.tensor([-math.log(6 / 7), -math.log(1 / 7), 0.0]))
    mean = joint_loss(fg, bi, target, sampling="mean")
    assert mean.item() == pytest.approx((-math.log(6 / 7) - math.log(1 / 7)) / 2, rel=1e-6)


def test_small_object_mining_keeps_exactly_top_ten_percent_of_valid_pixels():
    losses = torch.arange(40, dtype=torch.float32).view(1, 4, 10)  # 0..39
    valid = torch.ones_like(losses, dtype=torch.bool)
    valid[0, 3] = False  # 30..39 ignored: 30 valid pixels, top 10% = 3 → 27, 28, 29
    assert small_object_mining(losses, valid, 0.1).item() == pytest.approx(28.0)
    assert small_object_mining(losses, torch.zeros_like(valid), 0.1).item() == 0.0
    # at least one pixel is kept
    assert small_object_mining(losses, valid, 0.001).item() == pytest.approx(29.0)


def test_ohem_averages_the_hard_pixels():
    fg = torch.zeros(1, 2, 1, 4)
    fg[0, 1] = torch.tensor([4.0, -4.0, 4.0, -4.0])
    bi = torch.zeros(1, 1, 1, 4)
    target = torch.tensor([[[1, 1, 0, 0]]])
    losses = joint_pixel_losses(fg, bi, target)
    hard = losses[0, 0, [1, 2]]  # true-class probability < 0.7
    ohem = joint_loss(fg, bi, target, sampling="ohem", ohem_min_kept=1)
    assert ohem.item() == pytest.approx(hard.mean().item(), rel=1e-6)
    # with min_kept larger than the valid pixels, every pixel up to the easiest one is kept (reference rule)
    everything = joint_loss(fg, bi, target, sampling="ohem")
    assert everything.item() == pytest.approx(losses.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown sampling"):
        joint_loss(fg, bi, target, sampling="focal")  # type: ignore[arg-type]


def test_gradients_reach_both_branches():
    torch.manual_seed(0)
    model = FactSeg(FactSegConfig(backbone="resnet18")).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 16, (2, 64, 64))
    target[:, :8] = 255
    fg, bi = model(x)
    joint_loss(fg, bi, target).backward()
    for name in ("fg_head.weight", "bi_head.weight", "fg_fpn.lateral.0.weight", "bi_fpn.lateral.3.weight",
                 "fg_decoder.stages.3.2.conv.weight", "bi_decoder.stages.0.0.conv.weight", "encoder.conv1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_class_table_is_the_devkit_colour_to_name_map():
    by_color = {c.color: c.name for c in ISAID_CLASSES}
    assert by_color[(0, 191, 127)] == "roundabout"  # the reference code calls it storage_tank
    assert by_color[(0, 63, 63)] == "storage_tank"  # the reference code calls it roundabout
    assert [c.id for c in ISAID_CLASSES] == list(range(16))
    assert ISAID_CLASSES[2].color == (0, 191, 127) and ISAID_CLASSES[12].color == (0, 63, 63)  # reference order
    assert len(set(by_color)) == 16
    assert classes_from_dicts(classes_to_dicts(ISAID_CLASSES)) == ISAID_CLASSES
    with pytest.raises(ValueError, match="expected 0"):
        classes_from_dicts([{"id": 3, "name": "x", "color": [0, 0, 0]}])
