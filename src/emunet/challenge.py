"""The ISBI 2012 challenge's scores: foreground-restricted V_rand and V_info after border thinning.

After Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
connectomics", Front. Neuroanat. 2015, and the challenge's Fiji script
("Segmentation evaluation after border thinning"):

1. threshold the probability map (1 = cell interior) at th = 0.0, 0.1, ..., 1.0;
2. ground-truth segments are the 4-connected components of the label's interior; ground-truth
   membrane pixels are left out (foreground restriction), and the ground truth is not thinned;
3. predicted segments are the 4-connected components of the thresholded interior, grown over
   the boundary region by a 4-connected watershed that leaves lines about 1 px wide; each line
   pixel inside the ground-truth foreground is a segment of its own;
4. from the contingency table p_ij = n_ij / n: V_rand split/merge and V_info split/merge and
   their harmonic means;
5. scores are averaged over slices per threshold and the best threshold is reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["THRESHOLDS", "SegmentationScores", "segment_prediction", "segment_truth", "rand_info_scores", "score_slice", "score_stack"]

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


@dataclass
class SegmentationScores:
    """Foreground-restricted Rand and information scores (1 = perfect)."""

    v_rand: float
    v_rand_split: float
    v_rand_merge: float
    v_info: float
    v_info_split: float
    v_info_merge: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _harmonic(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _ratio(num: float, den: float) -> float:
    """num / den with 0 / 0 = 1: a single segment on both sides is a perfect match."""
    if den <= 1e-15:
        return 1.0
    return float(min(1.0, num / den))


def segment_truth(label: np.ndarray) -> np.ndarray:
    """4-connected components of the interior (label == 1); membrane pixels get 0."""
    segments, _ = ndimage.label(label == 1, structure=FOUR_CONNECTED)
    return segments


def segment_prediction(prob: np.ndarray, threshold: float, thin: bool = True) -> np.ndarray:
    """Segments of a probability map at ``threshold``: interior components, and with ``thin``
    the boundary region flooded from them by a 4-connected watershed of (1 - prob) that keeps
    1-px lines (label 0)."""
    seeds, count = ndimage.label(prob > threshold, structure=FOUR_CONNECTED)
    if not thin or count == 0:
        return seeds
    from skimage.segmentation import watershed

    return watershed(1.0 - prob, markers=seeds, connectivity=1, watershed_line=True)


def rand_info_scores(
    truth: np.ndarray, pred: np.ndarray, foreground: np.ndarray, lines_as_singletons: bool = True, pairs: bool = False
) -> SegmentationScores:
    """Scores of predicted segments against true segments over the ``foreground`` pixels.

    Args:
        truth: ground-truth segment ids (any integers).
        pred: predicted segment ids; with ``lines_as_singletons`` id 0 marks line pixels, each
            of which counts as a segment of its own.
        foreground: boolean mask of the pixels that count (the ground-truth foreground).
        pairs: count pairs of distinct pixels, sum n_ij (n_ij - 1), as scikit-image's
            ``adapted_rand_error`` does, instead of the challenge's N^2 normalisation
            sum (n_ij / n)^2 (Fiji's ``foregroundRestrictedStatsN2``). The two differ by about
            1 / (mean segment size).
    """
    t = truth[foreground].astype(np.int64).ravel()
    s = pred[foreground].astype(np.int64).ravel()
    n = t.size
    if n == 0:
        return SegmentationScores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    if lines_as_singletons:
        lines = s == 0
        s = s.copy()
        s[lines] = s.max() + 1 + np.arange(int(lines.sum()))
    _, t = np.unique(t, return_inverse=True)
    _, s = np.unique(s, return_inverse=True)
    t, s = t.ravel(), s.ravel()
    _, n_ij = np.unique(t * (int(s.max()) + 1) + s, return_counts=True)
    p_ij = n_ij / n
    t_i = np.bincount(t) / n
    s_j = np.bincount(s) / n

    self_pairs = 1.0 / n if pairs else 0.0  # sum of (1/n) over pixels, i.e. n / n^2
    sum_p2 = float((p_ij**2).sum()) - self_pairs
    rand_split = _ratio(sum_p2, float((t_i**2).sum()) - self_pairs)
    rand_merge = _ratio(sum_p2, float((s_j**2).sum()) - self_pairs)

    h_t = float(-(t_i * np.log(t_i)).sum())
    h_s = float(-(s_j * np.log(s_j)).sum())
    h_ts = float(-(p_ij * np.log(p_ij)).sum())
    mutual = max(0.0, h_t + h_s - h_ts)
    info_split = _ratio(mutual, h_s)
    info_merge = _ratio(mutual, h_t)
    return SegmentationScores(
        _harmonic(rand_split, rand_merge), rand_split, rand_merge, _harmonic(info_split, info_merge), info_split, info_merge
    )


def _pixel_fscore(prob: np.ndarray, label: np.ndarray, threshold: float) -> float:
    pred, true = prob > threshold, label == 1
    tp = float((pred & true).sum())
    denom = 2 * tp + float((pred & ~true).sum()) + float((~pred & true).sum())
    return 1.0 if denom == 0 else 2 * tp / denom


def score_slice(prob: np.ndarray, label: np.ndarray, thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """Scores of one slice at each threshold: V_rand/V_info parts and the pixel F-score."""
    if prob.shape != label.shape:
        raise ValueError(f"prediction shape {prob.shape} differs from label shape {label.shape}")
    truth = segment_truth(label)
    foreground = label == 1
    rows = []
    for th in thresholds:
        scores = rand_info_scores(truth, segment_prediction(prob, th), foreground)
        rows.append({"threshold": th, **scores.as_dict(), "pixel_fscore": _pixel_fscore(prob, label, th)})
    return rows


def score_stack(probs: np.ndarray, labels: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """Challenge scores of a stack: per-threshold means over slices, the best threshold for
    V_rand and V_info (each with its split and merge parts), pixel error (1 - best pixel
    F-score), and the per-slice scores at the V_rand threshold."""
    per_slice = [score_slice(p, y, thresholds) for p, y in zip(probs, labels)]
    keys = [k for k in per_slice[0][0] if k != "threshold"]
    mean = [{"threshold": th, **{k: float(np.mean([s[i][k] for s in per_slice])) for k in keys}} for i, th in enumerate(thresholds)]
    best_rand = max(range(len(thresholds)), key=lambda i: mean[i]["v_rand"])
    best_info = max(range(len(thresholds)), key=lambda i: mean[i]["v_info"])
    best_pixel = max(range(len(thresholds)), key=lambda i: mean[i]["pixel_fscore"])
    return {
        "v_rand": mean[best_rand]["v_rand"],
        "v_rand_split": mean[best_rand]["v_rand_split"],
        "v_rand_merge": mean[best_rand]["v_rand_merge"],
        "v_rand_threshold": thresholds[best_rand],
        "v_info": mean[best_info]["v_info"],
        "v_info_split": mean[best_info]["v_info_split"],
        "v_info_merge": mean[best_info]["v_info_merge"],
        "v_info_threshold": thresholds[best_info],
        "pixel_error": 1.0 - mean[best_pixel]["pixel_fscore"],
        "pixel_threshold": thresholds[best_pixel],
        "by_threshold": mean,
        "slices_at_best": [s[best_rand] for s in per_slice],
    }
