"""Training losses on logits (B, C, H, W) and integer labels (B, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "segmentation_loss"]


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft dice over all classes, the lab's formula (squares in the denominator)."""
    prob = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels, prob.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = (prob * prob).sum(dims) + (onehot * onehot).sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce", membrane_weight: float = 1.0
) -> torch.Tensor:
    """'ce': softmax cross-entropy (the lab's); 'ce+dice': plus the soft dice loss.

    ``membrane_weight`` weighs class 0 (membrane) against the others in the cross-entropy
    (a weighted mean, as ``nn.CrossEntropyLoss(weight=...)``): a gap in a thin membrane merges
    two cells, so its pixels deserve more than their share of the loss.
    """
    weight = None
    if membrane_weight != 1.0:
        weight = torch.ones(logits.shape[1], device=logits.device)
        weight[0] = membrane_weight
    loss = F.cross_entropy(logits.float(), labels, weight=weight)
    if kind == "ce+dice":
        loss = loss + soft_dice_loss(logits, labels)
    return loss
