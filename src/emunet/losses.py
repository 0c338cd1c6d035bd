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


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """'ce': softmax cross-entropy (the lab's); 'ce+dice': plus the soft dice loss."""
    loss = F.cross_entropy(logits.float(), labels)
    if kind == "ce+dice":
        loss = loss + soft_dice_loss(logits, labels)
    return loss
