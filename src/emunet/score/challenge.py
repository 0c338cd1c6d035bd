"""The ISBI 2012 challenge's scores, computed as the challenge's own Fiji code computes them.

Foreground-restricted V_rand and V_info after border thinning (Arganda-Carreras et al.,
"Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 2015), with every detail of the reference implementation (the Trainable
Segmentation metric classes behind the Fiji script "Segmentation evaluation after border
thinning") that changes a score:

1. thresholds: ``th = 0.0; th <= 1.0; th += 0.1`` in doubles, so 0.30000000000000004, ...,
   0.9999999999999999; a pixel is interior when ``prob > th``, its float32 value compared in
   double precision;
2. ground-truth segments: the 4-connected components of the label's interior; the true membrane
   is left out of every count (the foreground restriction);
3. predicted segments: the *binary* thresholded map thinned by a Vincent-Soille flood
   (4-connected, FIFO queue): interior components are the basins, membrane pixels are flooded
   from them in the order the reference takes pixels (column by column) and neighbours (left,
   up, right, down), and a pixel where two floods meet is left as a line; membrane with no
   interior in reach becomes a segment of its own (a slice with no interior is one segment);
4. each line pixel inside the true foreground is a segment of its own (N^2 normalisation);
5. per slice, the Rand F-score from pair counts (precision = merge, recall = split) and the
   information F-score from the entropies; V_rand and V_info are the means of the per-slice
   F-scores, while the split and merge parts of V_rand come from counts pooled over slices;
6. the best threshold of each score is its first maximum; NaN never wins.

Degenerate slices (one segment on both sides, empty foreground) score what the reference
gives, including its 0 for an empty foreground. Tested to 1e-12 against the values the
reference code printed for a set of cases (``tests/test_challenge_exact.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

try:
    from numba import njit
except ImportError:  # the same loops as plain Python: exact, about a hundred times slower
    import warnings

    def njit(*args, **kwargs):
        warnings.warn("numba is not installed: the challenge's scores run as plain Python (slow); pip install numba",
                      stacklevel=2)
        return lambda function: function

__all__ = [
    "FOUR_CONNECTED",
    "THRESHOLDS",
    "SliceScores",
    "thin_segments",
    "thin_binary",
    "segment_truth",
    "segment_prediction",
    "slice_scores_at",
    "score_slice",
    "score_stack",
    "score_segmentation_stack",
]

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
FOUR_CONNECTED.flags.writeable = False  # shared by every call: nobody may change it


def _reference_thresholds(start: float = 0.0, stop: float = 1.0, step: float = 0.1) -> tuple[float, ...]:
    """The thresholds exactly as the reference's ``for (th = start; th <= stop; th += step)``
    produces them: accumulated in doubles, so 0.1 * 3 is 0.30000000000000004."""
    out, th = [], start
    while th <= stop:
        out.append(th)
        th += step
    return tuple(out)


THRESHOLDS = _reference_thresholds()

# Pixel states of the flood, as in the reference: basins are 1, 2, ...
_LINE, _UNSEEN, _MASK, _QUEUED = 0, -1, -2, -3


@njit(cache=True, nogil=True)  # nogil: validation scores in a thread beside training
def _flood_membrane(state: np.ndarray, order_rows: np.ndarray, order_cols: np.ndarray, next_label: int) -> None:
    """Flood the membrane pixels (listed column by column in ``order_*``) from the labelled
    basins in ``state``, in place: the second level of a Vincent-Soille watershed of a
    two-level image, with the reference's FIFO queue, pixel order and neighbour order."""
    height, width = state.shape
    d_row = np.array([0, -1, 0, 1])  # left, up, right, down: the reference's neighbour order
    d_col = np.array([-1, 0, 1, 0])
    queue_r = np.empty(order_rows.size, np.int64)
    queue_c = np.empty(order_rows.size, np.int64)
    head, tail = 0, 0
    for k in range(order_rows.size):  # membrane pixels next to a basin start the queue
        r, c = order_rows[k], order_cols[k]
        state[r, c] = _MASK
        for d in range(4):
            rr, cc = r + d_row[d], c + d_col[d]
            if 0 <= rr < height and 0 <= cc < width and state[rr, cc] >= _LINE:
                queue_r[tail], queue_c[tail] = r, c
                tail += 1
                state[r, c] = _QUEUED
                break
    via_line = False  # the reference's flag: a pixel made a line by a line neighbour may still join a basin
    while head < tail:
        r, c = queue_r[head], queue_c[head]
        head += 1
        for d in range(4):
            rr, cc = r + d_row[d], c + d_col[d]
            if not (0 <= rr < height and 0 <= cc < width):
                continue
            other = state[rr, cc]
            if other > 0:
                if state[r, c] == _QUEUED or (state[r, c] == _LINE and via_line):
                    state[r, c] = other
                elif state[r, c] > 0 and state[r, c] != other:
                    state[r, c] = _LINE
                    via_line = False
            elif other == _LINE:
                if state[r, c] == _QUEUED:
                    state[r, c] = _LINE
                    via_line = True
            elif other == _MASK:
                state[rr, cc] = _QUEUED
                queue_r[tail], queue_c[tail] = rr, cc
                tail += 1
    for k in range(order_rows.size):  # membrane out of every basin's reach: new basins
        r, c = order_rows[k], order_cols[k]
        if state[r, c] != _MASK:
            continue
        state[r, c] = next_label
        queue_r[0], queue_c[0] = r, c
        head, tail = 0, 1
        while head < tail:
            pr, pc = queue_r[head], queue_c[head]
            head += 1
            for d in range(4):
                rr, cc = pr + d_row[d], pc + d_col[d]
                if 0 <= rr < height and 0 <= cc < width and state[rr, cc] == _MASK:
                    state[rr, cc] = next_label
                    queue_r[tail], queue_c[tail] = rr, cc
                    tail += 1
        next_label += 1


def thin_segments(segments: np.ndarray) -> np.ndarray:
    """Flood the unlabelled pixels (0) of a segmentation from its segments (ids > 0) as the
    reference thins borders: int32 labels, 0 left only on the 1-px lines where floods meet."""
    segments = np.asarray(segments)
    if segments.ndim != 2:
        raise ValueError(f"expected one 2-D slice, got shape {segments.shape}")
    state = segments.astype(np.int32)
    border = segments == 0
    state[border] = _UNSEEN
    border_cols, border_rows = np.nonzero(border.T)  # the reference's pixel order: column by column
    if border_rows.size:
        _flood_membrane(state, border_rows.astype(np.int64), border_cols.astype(np.int64), int(segments.max(initial=0)) + 1)
    return state


def thin_binary(interior: np.ndarray) -> np.ndarray:
    """Segments of a binary map (True = cell interior) after the reference's border thinning:
    int32 labels 1, 2, ... and 0 on the 1-px lines where two floods meet."""
    interior = np.asarray(interior, bool)
    # Basins numbered in the reference's pixel order (column by column): label the transpose.
    basins, _ = ndimage.label(interior.T, structure=FOUR_CONNECTED)
    return thin_segments(basins.T)


def segment_truth(label: np.ndarray) -> np.ndarray:
    """4-connected components of the true interior (label == 1); membrane pixels get 0."""
    segments, _ = ndimage.label(np.asarray(label) == 1, structure=FOUR_CONNECTED)
    return segments


def segment_prediction(prob: np.ndarray, threshold: float) -> np.ndarray:
    """The thinned segmentation of a probability map (1 = interior) at ``threshold``, the float32
    values compared with the threshold in double precision as the reference does."""
    return thin_binary(np.asarray(prob, np.float32).astype(np.float64) > threshold)


@njit(cache=True, nogil=True)  # nogil: validation scores in a thread beside training
def _overlaps(truth: np.ndarray, pred: np.ndarray, n_truth: int, n_pred: int):
    """Overlap counts over the true foreground (truth > 0): pixels per true segment, per
    predicted segment, on predicted lines (pred == 0), and every non-zero n_ij with i, j >= 1."""
    per_truth = np.zeros(n_truth + 1, np.int64)
    per_pred = np.zeros(n_pred + 1, np.int64)
    for k in range(truth.size):
        if truth[k] > 0:
            per_truth[truth[k]] += 1
            per_pred[pred[k]] += 1
    on_lines = per_pred[0]
    per_pred[0] = 0
    start = np.zeros(n_pred + 2, np.int64)  # pixels bucketed by predicted segment
    for j in range(n_pred + 1):
        start[j + 1] = start[j] + per_pred[j]
    fill = start.copy()
    members = np.empty(start[n_pred + 1], np.int64)
    for k in range(truth.size):
        if truth[k] > 0 and pred[k] > 0:
            members[fill[pred[k]]] = truth[k]
            fill[pred[k]] += 1
    tally = np.zeros(n_truth + 1, np.int64)
    pairs = np.empty(members.size, np.int64)
    n_pairs = 0
    for j in range(1, n_pred + 1):
        for k in range(start[j], start[j + 1]):
            tally[members[k]] += 1
        for k in range(start[j], start[j + 1]):
            i = members[k]
            if tally[i] > 0:
                pairs[n_pairs] = tally[i]
                n_pairs += 1
                tally[i] = 0
    return per_truth[1:], per_pred[1:], on_lines, pairs[:n_pairs]


def _div(num: float, den: float) -> float:
    """num / den with IEEE semantics (x / 0 is +-inf, 0 / 0 is NaN), as in Java."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def _xlogx(p: np.ndarray) -> float:
    p = p[p != 0]
    return float((p * np.log(p)).sum())


@dataclass
class SliceScores:
    """The reference's per-slice statistics at one threshold.

    ``rand_tp``, ``rand_fp``, ``rand_fn`` are the pair counts (N^2 normalisation) that are pooled
    over slices; ``v_rand_split`` is the Rand recall, ``v_rand_merge`` its precision; likewise
    for the information scores (split: C(S|T), merge: C(T|S)).
    """

    v_rand: float
    v_rand_split: float
    v_rand_merge: float
    v_info: float
    v_info_split: float
    v_info_merge: float
    rand_tp: float
    rand_fp: float
    rand_fn: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _classification(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """(F-score, precision, recall) as the reference's ClassificationStatistics computes them."""
    precision = 1.0 if fp == 0 else _div(tp, tp + fp)
    recall = 1.0 if fn == 0 else _div(tp, tp + fn)
    total = precision + recall
    fscore = 2.0 * precision * recall / total if total > 0 else 0.0
    return fscore, precision, recall


def slice_scores_at(truth: np.ndarray, pred: np.ndarray) -> SliceScores:
    """Foreground-restricted Rand and information scores of thinned segments ``pred`` (0 = line)
    against true segments ``truth`` (0 = membrane), as the reference computes them."""
    per_truth, per_pred, on_lines, pairs = _overlaps(
        truth.ravel().astype(np.int64), pred.ravel().astype(np.int64), int(truth.max(initial=0)), int(pred.max(initial=0))
    )
    n = float(per_truth.sum())
    if n == 0:  # the reference divides 0 by 0 here: NaN counts and F-scores of 0
        nan = float("nan")
        return SliceScores(0.0, nan, nan, 0.0, nan, nan, nan, nan, nan)
    sum_a2 = float((per_truth.astype(np.float64) ** 2).sum())
    sum_b2 = float((per_pred.astype(np.float64) ** 2).sum())
    sum_ab2 = float((pairs.astype(np.float64) ** 2).sum())
    tp = sum_ab2 + on_lines  # each line pixel is a singleton: it pairs with itself only
    fp = sum_b2 - sum_ab2
    fn = sum_a2 - sum_ab2 - on_lines
    v_rand, rand_merge, rand_split = _classification(tp, fp, fn)

    lines_share = on_lines / n
    sum_a = _xlogx(per_truth / n)
    sum_b = _xlogx(per_pred / n) - lines_share * math.log(n)
    sum_ab = _xlogx(pairs / n) - lines_share * math.log(n)
    h_truth, h_pred = -sum_a, -sum_b
    h_truth_given_pred, h_pred_given_truth = sum_b - sum_ab, sum_a - sum_ab
    info_merge = _div(h_truth - h_truth_given_pred, h_truth)
    info_split = _div(h_pred - h_pred_given_truth, h_pred)
    if info_split == 0:
        info_merge = 1.0
    total = info_merge + info_split
    v_info = 2.0 * info_merge * info_split / total if total > 0 else 0.0
    return SliceScores(v_rand, rand_split, rand_merge, v_info, info_split, info_merge, tp, fp, fn)


def _pixel_fscore(interior: np.ndarray, true: np.ndarray, true_count: int) -> float:
    """F-score of the interior pixels: 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + true)."""
    tp = np.count_nonzero(interior & true)
    denom = np.count_nonzero(interior) + true_count
    return 1.0 if denom == 0 else 2.0 * tp / denom


def score_slice(prob: np.ndarray, label: np.ndarray, thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """Scores of one slice (``label``: 1 = interior) at each threshold: the reference's Rand and
    information statistics and the pixel F-score of the interior."""
    if prob.shape != label.shape:
        raise ValueError(f"prediction shape {prob.shape} differs from label shape {label.shape}")
    truth = segment_truth(label)
    true = np.asarray(label) == 1
    true_count = np.count_nonzero(true)
    prob64 = np.asarray(prob, np.float32).astype(np.float64)
    rows = []
    for th in thresholds:
        interior = prob64 > th
        scores = slice_scores_at(truth, thin_binary(interior))
        rows.append({"threshold": th, **scores.as_dict(), "pixel_fscore": _pixel_fscore(interior, true, true_count)})
    return rows


def _first_maximum(values: list[float]) -> int:
    """Index of the first maximum, as the reference's ``if (f > best)`` from 0 finds it: NaN
    never wins, and with no positive value the first threshold is reported."""
    best, best_value = 0, 0.0
    for i, v in enumerate(values):
        if v > best_value:
            best, best_value = i, v
    return best


def _sweep_row(threshold, rows: list[dict]) -> dict:
    """One threshold's stack scores from its per-slice rows: F-scores averaged over slices,
    V_rand's split and merge from the pooled pair counts, V_info's averaged."""
    _, pooled_merge, pooled_split = _classification(
        sum(r["rand_tp"] for r in rows), sum(r["rand_fp"] for r in rows), sum(r["rand_fn"] for r in rows)
    )
    out = {"threshold": threshold, "v_rand": float(np.mean([r["v_rand"] for r in rows])),
           "v_rand_split": pooled_split, "v_rand_merge": pooled_merge}
    for key in ("v_info", "v_info_split", "v_info_merge", "pixel_fscore"):
        if key in rows[0]:
            out[key] = float(np.mean([r[key] for r in rows]))
    return out


def score_stack(probs: np.ndarray, labels: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """Challenge scores of a stack (probabilities 1 = interior, labels 1 = interior).

    Per threshold (``by_threshold``): V_rand and V_info, the means of the per-slice F-scores;
    V_rand's split and merge from pair counts pooled over slices (as the reference's statistics
    object carries them); V_info's split and merge averaged over slices; the pixel F-score.
    Then each score at its own best threshold (first maximum), the challenge's pixel error
    (``challenge_pixel_error``: 1 - the best pixel F-score), and the per-slice rows at the V_rand threshold (``slices_at_best``).
    """
    if len(probs) != len(labels) or len(probs) == 0:
        raise ValueError(f"{len(probs)} probability maps for {len(labels)} label images")
    per_slice = [score_slice(p, y, thresholds) for p, y in zip(probs, labels)]
    by_threshold = [_sweep_row(th, [s[i] for s in per_slice]) for i, th in enumerate(thresholds)]
    best_rand = _first_maximum([m["v_rand"] for m in by_threshold])
    best_info = _first_maximum([m["v_info"] for m in by_threshold])
    best_pixel = _first_maximum([m["pixel_fscore"] for m in by_threshold])
    return {
        "v_rand": by_threshold[best_rand]["v_rand"],
        "v_rand_split": by_threshold[best_rand]["v_rand_split"],
        "v_rand_merge": by_threshold[best_rand]["v_rand_merge"],
        "v_rand_threshold": thresholds[best_rand],
        "v_info": by_threshold[best_info]["v_info"],
        "v_info_split": by_threshold[best_info]["v_info_split"],
        "v_info_merge": by_threshold[best_info]["v_info_merge"],
        "v_info_threshold": thresholds[best_info],
        "challenge_pixel_error": 1.0 - by_threshold[best_pixel]["pixel_fscore"],
        "pixel_threshold": thresholds[best_pixel],
        "by_threshold": by_threshold,
        "slices_at_best": [s[best_rand] for s in per_slice],
    }


def score_segmentation_stack(segmentations: np.ndarray, labels: np.ndarray) -> dict:
    """Challenge scores of label images (each id > 0 a cell, 0 = boundary) against labels
    (1 = interior): the boundaries thinned by the same flood, no threshold sweep."""
    if len(segmentations) != len(labels) or len(segmentations) == 0:
        raise ValueError(f"{len(segmentations)} segmentations for {len(labels)} label images")
    rows = [slice_scores_at(segment_truth(y), thin_segments(s)).as_dict() for s, y in zip(segmentations, labels)]
    stack = _sweep_row(None, rows)
    return {**{k: stack[k] for k in ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")},
            "by_threshold": [stack], "slices_at_best": rows}
