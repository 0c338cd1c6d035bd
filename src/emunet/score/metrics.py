"""Segmentation scores as plain functions on arrays (MONAI style), per slice.

``prob`` is the foreground probability (class 1 = cell interior for ISBI) and ``label`` the
0/1 class map. The two-class softmax is ``(1 - prob, prob)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lab_dice", "membrane_dice", "membrane_iou", "pixel_error", "slice_scores", "SCORE_NAMES"]


def _check(prob: np.ndarray, label: np.ndarray) -> None:
    if prob.shape != label.shape:
        raise ValueError(f"prediction shape {prob.shape} differs from label shape {label.shape}")


def lab_dice(prob: np.ndarray, label: np.ndarray) -> float:
    """The MindSpore lab's dice: 2*sum(p*y) / (sum(p^2) + sum(y^2)) over the softmax p and the
    one-hot label y of both channels, for one slice (the lab averages this over slices)."""
    _check(prob, label)
    p = np.stack([1.0 - prob, prob]).astype(np.float64)
    y = np.stack([label == 0, label == 1]).astype(np.float64)
    return float(2.0 * (p * y).sum() / ((p * p).sum() + (y * y).sum()))


def _membrane(prob: np.ndarray, label: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    _check(prob, label)
    return prob <= threshold, label == 0


def membrane_dice(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Hard dice of the membrane class (the minority class, about 22 % of ISBI pixels)."""
    pred, true = _membrane(prob, label, threshold)
    denom = pred.sum() + true.sum()
    return 1.0 if denom == 0 else float(2.0 * (pred & true).sum() / denom)


def membrane_iou(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the membrane class."""
    pred, true = _membrane(prob, label, threshold)
    union = (pred | true).sum()
    return 1.0 if union == 0 else float((pred & true).sum() / union)


def pixel_error(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> float:
    """Share of pixels whose thresholded class is wrong."""
    _check(prob, label)
    return float(((prob > threshold) != (label == 1)).mean())


SCORE_NAMES = ("lab_dice", "membrane_dice", "membrane_iou", "pixel_error_05")


def slice_scores(prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """All scores of one slice (``pixel_error_05``: the share of wrong pixels at threshold 0.5)."""
    return {
        "lab_dice": lab_dice(prob, label),
        "membrane_dice": membrane_dice(prob, label),
        "membrane_iou": membrane_iou(prob, label),
        "pixel_error_05": pixel_error(prob, label, 0.5),
    }
