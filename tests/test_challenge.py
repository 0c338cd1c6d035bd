"""The ISBI 2012 challenge scores, on tiny arrays worked out by hand."""

import numpy as np
import pytest

from emunet.score.challenge import score_slice, score_stack, segment_prediction, segment_truth, slice_scores_at


def _two_cells():
    """A 3x5 label: two cells (1) split by a membrane column (0)."""
    return np.array([[1, 1, 0, 1, 1]] * 3, np.uint8)


def test_perfect_prediction_scores_one():
    label = _two_cells()
    result = score_stack(label[None].astype(np.float32), label[None])
    for key in ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge"):
        assert result[key] == pytest.approx(1.0)
    assert result["challenge_pixel_error"] == pytest.approx(0.0)


def test_a_merge_lowers_the_merge_parts_only():
    label = _two_cells()
    # The membrane is missed: one predicted segment covers both 6-pixel cells (n = 12).
    merged = slice_scores_at(segment_truth(label), np.ones_like(label, int))
    # sum p_ij^2 = 2 * (6/12)^2 = 0.5; sum t_i^2 = 0.5; sum s_j^2 = 1
    assert merged.v_rand_split == pytest.approx(1.0)
    assert merged.v_rand_merge == pytest.approx(0.5)
    assert merged.v_rand == pytest.approx(2 * 0.5 / 1.5)
    # I = H(T) + H(S) - H(T,S) = log 2 + 0 - log 2 = 0: merge part I / H(T) = 0; the split part
    # I / H(S) is 0 / 0, which the reference leaves undefined and scores as an F-score of 0
    assert merged.v_info_merge == pytest.approx(0.0)
    assert merged.v_info == 0.0


def test_a_split_lowers_the_split_parts_only():
    label = np.ones((2, 4), np.uint8)  # one cell of 8 pixels
    pred = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])  # cut in two halves
    split = slice_scores_at(segment_truth(label), pred)
    # sum p_ij^2 = 2 * (4/8)^2 = 0.5; sum t_i^2 = 1; sum s_j^2 = 0.5
    assert split.v_rand_split == pytest.approx(0.5)
    assert split.v_rand_merge == pytest.approx(1.0)
    # I = H(T) + H(S) - H(T,S) = 0 + log2 - log2 = 0; H(S) = log 2; H(T) = 0: the split part is
    # 0 and the reference then sets the merge part to 1
    assert split.v_info_split == pytest.approx(0.0)
    assert split.v_info_merge == 1.0


def test_line_pixels_inside_the_foreground_are_singletons():
    label = np.ones((1, 4), np.uint8)
    pred = np.array([[1, 0, 0, 1]])  # two line pixels in a single true cell
    scores = slice_scores_at(segment_truth(label), pred)
    # segments: {1: 2 px}, two singletons -> sum p^2 = (2/4)^2 + 2 (1/4)^2 = 0.375; sum t^2 = 1
    assert scores.v_rand_split == pytest.approx(0.375)
    assert scores.v_rand_merge == pytest.approx(1.0)


def test_thinning_leaves_one_pixel_lines_between_seeds():
    prob = np.ones((5, 9), np.float32)
    prob[:, 3:6] = 0.0  # a 3-px wide predicted membrane
    segments = segment_prediction(prob, 0.5)
    assert set(np.unique(segments)) == {0, 1, 2}
    assert (segments == 0).sum() == 5  # one line pixel per row
    assert (segments[:, 4] == 0).all()  # in the middle of an odd-width membrane


def test_challenge_normalisation_is_close_to_pair_counting_on_real_slices(isbi_dir):
    import tifffile
    from skimage.metrics import adapted_rand_error

    label = (tifffile.imread(isbi_dir / "train-labels.tif", key=0) == 255).astype(np.uint8)
    truth = segment_truth(label)
    rows = np.arange(label.shape[0])[:, None]
    pred = truth * 4 + (rows // 128)  # cut every cell by three horizontal lines: a known split
    n2 = slice_scores_at(truth, pred + 1)  # no zero ids: no line pixels
    error, _, _ = adapted_rand_error(truth, pred, ignore_labels=(0,))
    assert n2.v_rand == pytest.approx(1.0 - error, abs=1e-3)
    assert n2.v_rand_split < 0.9 and n2.v_rand_merge == pytest.approx(1.0)


def test_sweep_reports_the_best_threshold():
    label = _two_cells()
    prob = np.where(label == 1, 0.75, 0.25).astype(np.float32)
    result = score_stack(prob[None], label[None])
    assert result["v_rand"] == pytest.approx(1.0)
    assert 0.25 <= result["v_rand_threshold"] < 0.75
    assert len(result["by_threshold"]) == 11 and len(score_slice(prob, label)) == 11


def test_error_overlay_colours_merges_and_splits():
    from emunet.score.report import error_overlay

    label = np.array([[1, 1, 0, 1, 1]] * 4, np.uint8)
    image = np.full(label.shape, 0.5, np.float32)
    merged = error_overlay(image, np.ones(label.shape, np.float32), label, 0.5)
    red = (merged[..., 0] > 150) & (merged[..., 2] < 100)
    assert red.sum() == 8  # the smaller-or-later cell of the merged pair, all its 8 pixels
    split_prob = np.where(label == 1, 1.0, 0.0).astype(np.float32)
    split_prob[2, :] = 0.0  # a predicted membrane across both cells: each cell split in two
    split = error_overlay(image, split_prob, label, 0.5)
    blue = (split[..., 2] > 150) & (split[..., 0] < 100)
    assert blue.sum() > 0 and not ((split[..., 0] > 150) & (split[..., 2] < 100)).any()
