"""Collaborative probability (CP) fusion of the foreground and binary (foreground-activation) branches.

With softmax probabilities q of the C-class head and the foreground probability f = sigmoid(binary logit):
    p0 ∝ q0 · (1 − f),  pk ∝ qk · f  (k ≥ 1),  renormalised to sum to 1 over classes.
The same joint probability feeds the training loss (under NLL) and the inference output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cp_fusion(fg_logits: torch.Tensor, bi_logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Return CP-fused class probabilities (N×C×H×W) from class logits (N×C×H×W) and binary logits (N×1×H×W).

    Computed in float32 whatever the input dtype, so that mixed-precision inference keeps sums at 1.
    """
    class_prob = torch.softmax(fg_logits.float(), dim=1)
    fg_prob = torch.sigmoid(bi_logits.float())
    joint = torch.cat((class_prob[:, :1] * (1.0 - fg_prob), class_prob[:, 1:] * fg_prob), dim=1)
    return joint / (joint.sum(dim=1, keepdim=True) + eps)


def cp_log_prob(fg_logits: torch.Tensor, bi_logits: torch.Tensor) -> torch.Tensor:
    """Log of the CP-fused probabilities, computed stably in log space (for the NLL loss).

    log p0 = log q0 + log(1−f) − log Z, log pk = log qk + log f − log Z, with
    Z = q0(1−f) + Σk qk f, and log Z taken by logsumexp over the unnormalised log terms.
    """
    log_q = F.log_softmax(fg_logits.float(), dim=1)
    bi = bi_logits.float()
    log_f = F.logsigmoid(bi)
    log_not_f = F.logsigmoid(-bi)
    joint = torch.cat((log_q[:, :1] + log_not_f, log_q[:, 1:] + log_f), dim=1)
    return joint - torch.logsumexp(joint, dim=1, keepdim=True)
