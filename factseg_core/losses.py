"""Joint CP loss of FactSeg with small-object mining (SOM), or OHEM, or a plain mean.

The loss is the NLL of the CP-fused probability (see :mod:`factseg_core.fusion`) with label 255 ignored.
SOM averages the top ``ratio`` fraction of the *valid* pixel losses: small objects are a tiny share of
pixels, and mining the hardest 10% keeps their gradient from being drowned by easy background. (The
reference takes the top fraction of all pixels, ignored ones included as zeros, then averages the non-zero
ones; counting only valid pixels makes the kept share independent of padding and ignore regions.)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .config import IGNORE_INDEX, SOM_RATIO
from .fusion import cp_log_prob

Sampling = Literal["som", "ohem", "mean"]


def joint_pixel_losses(
    fg_logits: torch.Tensor, bi_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-pixel NLL of the CP-fused probability (N×H×W; 0 where ignored)."""
    log_p = cp_log_prob(fg_logits, bi_logits)
    return F.nll_loss(log_p, target.long(), ignore_index=ignore_index, reduction="none")


def small_object_mining(losses: torch.Tensor, valid: torch.Tensor, ratio: float = SOM_RATIO) -> torch.Tensor:
    """Mean of the top ``ratio`` share (at least one) of the valid pixel losses; 0 if none is valid."""
    valid_losses = losses[valid]
    if valid_losses.numel() == 0:
        return losses.sum() * 0.0
    keep = max(1, int(ratio * valid_losses.numel()))
    return valid_losses.topk(keep, sorted=False).values.mean()


def ohem(
    losses: torch.Tensor, prob_true: torch.Tensor, valid: torch.Tensor, thresh: float = 0.7, min_kept: int = 100_000
) -> torch.Tensor:
    """Online hard example mining: average the losses of valid pixels whose true-class probability is below
    ``thresh``, or of the ``min_kept`` least confident pixels when fewer than that fall below it."""
    prob = prob_true[valid]
    if prob.numel() == 0:
        return losses.sum() * 0.0
    kth = min(min_kept, prob.numel() - 1)
    threshold = max(prob.kthvalue(kth + 1).values.item(), thresh)
    hard = prob <= threshold
    return losses[valid][hard].mean()


def joint_loss(
    fg_logits: torch.Tensor,
    bi_logits: torch.Tensor,
    target: torch.Tensor,
    sampling: Sampling = "som",
    ratio: float = SOM_RATIO,
    ignore_index: int = IGNORE_INDEX,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100_000,
) -> torch.Tensor:
    """FactSeg's training loss: joint CP probability under NLL, reduced by SOM (default), OHEM or mean."""
    losses = joint_pixel_losses(fg_logits, bi_logits, target, ignore_index)
    valid = target != ignore_index
    if sampling == "som":
        return small_object_mining(losses, valid, ratio)
    if sampling == "ohem":
        prob_true = torch.exp(-losses.detach())  # CP probability of the true class
        return ohem(losses, prob_true, valid, ohem_thresh, ohem_min_kept)
    if sampling == "mean":
        return losses[valid].mean() if valid.any() else losses.sum() * 0.0
    raise ValueError(f"unknown sampling {sampling!r}: use 'som', 'ohem' or 'mean'")
