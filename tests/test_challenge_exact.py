"""The challenge's scores against the values its own Fiji code printed for nine cases
(``../shared/data/isbi-scoring``): every threshold, both maxima, to 1e-12."""

import json

import numpy as np
import pytest
import tifffile

from emunet.score.challenge import THRESHOLDS, score_stack, thin_binary

CASES = [
    "1_perfect_thin",
    "2_odd_border_line_in_cell",
    "3_graded_border",
    "4_even_border_fifo",
    "5_two_slices_macro",
    "6_float32_tie_0.3",
    "7_noisy_real_crops",
    "8_edge_values",
    "fold1_main",
]
TOL = 1e-12


def _load(scoring_dir, name):
    prob = tifffile.imread(scoring_dir / f"{name}_prob.tif")
    label = tifffile.imread(scoring_dir / f"{name}_lab.tif")
    if prob.ndim == 2:
        prob, label = prob[None], label[None]
    return prob, (label == 255).astype(np.uint8)


@pytest.fixture(scope="module")
def expected(scoring_dir):
    return json.loads((scoring_dir / "expected.json").read_text())


def test_thresholds_are_the_reference_doubles(expected):
    assert list(THRESHOLDS) == expected["1_perfect_thin"]["thresholds"]
    assert THRESHOLDS[3] == 0.30000000000000004 and THRESHOLDS[-1] == 0.9999999999999999


@pytest.mark.parametrize("name", CASES)
def test_scores_match_the_reference_at_every_threshold(scoring_dir, expected, name):
    want = expected[name]
    prob, label = _load(scoring_dir, name)
    result = score_stack(prob, label)
    sweep = result["by_threshold"]
    for ours, theirs in [
        ("v_rand", "v_rand"),
        ("v_info", "v_info"),
        ("v_rand_split", "v_rand_split_pooled"),
        ("v_rand_merge", "v_rand_merge_pooled"),
    ]:
        np.testing.assert_allclose([row[ours] for row in sweep], want[theirs], rtol=0, atol=TOL, err_msg=f"{name}: {ours}")
    assert result["v_rand"] == pytest.approx(want["max_v_rand"], abs=TOL)
    assert result["v_info"] == pytest.approx(want["max_v_info"], abs=TOL)
    # The reported threshold is the first one reaching the maximum, for each score on its own.
    assert result["v_rand_threshold"] == THRESHOLDS[int(np.argmax(want["v_rand"]))]
    assert result["v_info_threshold"] == THRESHOLDS[int(np.argmax(want["v_info"]))]


def test_fold1_map_scores_as_the_issue_reports(scoring_dir):
    result = score_stack(*_load(scoring_dir, "fold1_main"))
    assert round(result["v_rand"], 4) == 0.9623 and result["v_rand_threshold"] == THRESHOLDS[9]
    assert round(result["v_info"], 4) == 0.9774 and result["v_info_threshold"] == THRESHOLDS[5]


def test_even_border_line_falls_where_the_fifo_flood_meets():
    interior = np.ones((3, 8), bool)
    interior[:, 3:5] = False  # a 2-px membrane: the flood from the left reaches column 3 first
    segments = thin_binary(interior)
    assert (segments[:, 3] > 0).all() and (segments[:, 4] == 0).all()
    assert len(np.unique(segments[segments > 0])) == 2


def test_a_slice_with_no_interior_is_one_segment():
    assert (thin_binary(np.zeros((5, 7), bool)) == 1).all()



def test_the_compiled_flood_equals_its_plain_python_loops(rng):
    from emunet.score import challenge

    interior = ndimage_interior(rng)
    compiled = challenge.thin_binary(interior)
    plain = getattr(challenge._flood_membrane, "py_func", challenge._flood_membrane)
    original, challenge._flood_membrane = challenge._flood_membrane, plain
    try:
        assert np.array_equal(challenge.thin_binary(interior), compiled)
    finally:
        challenge._flood_membrane = original


def ndimage_interior(rng):
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random((60, 70)), 2) > 0.5
