"""Post-processing of probability maps before they are written or scored."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["smooth_in_place"]


def smooth_in_place(prob: np.ndarray, sigma: float, chunk: int = 1024) -> np.ndarray:
    """Gaussian-smooth a 2-D probability map in place (scipy's 'reflect' borders).

    A light blur (sigma about 1 px) removes one- and two-pixel dips inside cells that would
    otherwise split a cell at the challenge's high thresholds. On fold 1 it raised V_rand by
    0.005 on average over the 12 checkpoints it was chosen on, but only by 0.0005 (-0.002 to
    +0.003) on 3 later runs: a small gain, not a cure (README, Results).
    The filter is separable and runs over bands of ``chunk`` rows, then columns, so memory
    stays at one band however large the image (as ``scipy.ndimage.gaussian_filter``, which it
    equals, would not).
    """
    if sigma <= 0:
        return prob
    if prob.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {prob.shape}")
    h, w = prob.shape
    for top in range(0, h, chunk):
        band = prob[top : top + chunk]
        band[...] = ndimage.gaussian_filter1d(band, sigma, axis=1)
    for left in range(0, w, chunk):
        band = prob[:, left : left + chunk]
        band[...] = ndimage.gaussian_filter1d(band, sigma, axis=0)
    return prob
