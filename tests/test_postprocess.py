"""Post-processing of probability maps: smoothing and closing gaps in cell walls."""

import numpy as np
import pytest
from scipy import ndimage

from emunet.config import ConfigError, load_config
from emunet.score.challenge import FOUR_CONNECTED
from emunet.infer.postprocess import close_gaps_in_place, smooth_in_place


@pytest.mark.parametrize("shape, chunk", [((37, 53), 8), ((64, 64), 1024), ((5, 300), 7)])
def test_banded_smoothing_equals_scipy(shape, chunk):
    prob = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = ndimage.gaussian_filter(prob, 1.3)
    got = prob.copy()
    assert smooth_in_place(got, 1.3, chunk=chunk) is got
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_zero_sigma_leaves_the_map_alone():
    prob = np.random.default_rng(1).random((9, 9), dtype=np.float32)
    before = prob.copy()
    smooth_in_place(prob, 0.0)
    assert np.array_equal(prob, before)


def test_a_one_pixel_dip_inside_a_cell_is_filled_above_threshold():
    prob = np.full((21, 21), 0.99, np.float32)
    prob[10, 10] = 0.5  # a lone dark pixel that would be its own hole at threshold 0.9
    smooth_in_place(prob, 1.0)
    assert prob.min() > 0.9


@pytest.mark.parametrize("bad", ["-1", "nan", "100"])
def test_bad_smooth_setting_is_refused(bad):
    with pytest.raises(ConfigError, match="predict.smooth"):
        load_config(None, [f"predict.smooth={bad}"])


def _cells(rows: int, cols: int, side: int = 24, wall: int = 3, rng=None) -> np.ndarray:
    """A grid of square cells (interior 0.97) behind walls (0.05), blurred like a network's output."""
    prob = np.full((rows * side, cols * side), 0.97, np.float32)
    for k in range(rows + 1):
        prob[max(0, k * side - wall // 2) : k * side + wall - wall // 2] = 0.05
    for k in range(cols + 1):
        prob[:, max(0, k * side - wall // 2) : k * side + wall - wall // 2] = 0.05
    if rng is not None:
        prob += rng.normal(0, 0.02, prob.shape).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(prob, 0.7), 0, 1)


def _count(prob: np.ndarray, threshold: float) -> int:
    return ndimage.label(prob > threshold, structure=FOUR_CONNECTED)[1]


def test_a_gap_in_a_visible_wall_is_closed():
    prob = _cells(2, 2)
    prob[6:10, 22:27] = 0.95  # a 4 px gap in the wall between the two upper cells
    assert _count(prob, 0.5) == 3  # they merge at every threshold below the gap's 0.95
    closed = close_gaps_in_place(prob.copy(), 0.5)
    for threshold in (0.3, 0.5, 0.7, 0.9):
        assert _count(closed, threshold) == 4
    # only the borders change, and only downwards
    assert (closed <= prob).all() and (closed < prob).mean() < 0.1


def test_a_partial_crease_inside_one_cell_is_not_a_wall():
    prob = _cells(1, 1, side=60)
    prob[4:24, 28:32] = 0.3  # a dark crease across a third of the cell: two basins, but the
    before = prob.copy()  # border between them is mostly interior (mean membrane about 0.3)
    close_gaps_in_place(prob, 0.5)
    np.testing.assert_array_equal(prob, before)
    assert (close_gaps_in_place(prob, 0.2) < before).any()  # below the border's mean it is a wall


def test_zero_threshold_is_off_and_blank_maps_pass():
    prob = _cells(2, 3)
    prob[6:10, 22:27] = 0.95
    before = prob.copy()
    assert close_gaps_in_place(prob, 0.0) is prob and np.array_equal(prob, before)
    for blank in (np.zeros((30, 30), np.float32), np.ones((30, 30), np.float32)):
        np.testing.assert_array_equal(close_gaps_in_place(blank.copy(), 0.5), blank)
    with pytest.raises(ValueError, match="2-D"):
        close_gaps_in_place(np.ones((2, 8, 8), np.float32), 0.5)


def test_windows_give_the_same_map_as_one_pass():
    rng = np.random.default_rng(3)
    prob = _cells(9, 4, side=20, rng=rng)
    for _ in range(12):  # random gaps in the horizontal walls
        y, x = 20 * rng.integers(1, 9), rng.integers(2, 70)
        prob[y - 2 : y + 2, x : x + 4] = 0.95
    whole = close_gaps_in_place(prob.copy(), 0.5)
    assert not np.array_equal(whole, prob)
    for window, margin in ((25, 40), (33, 64), (50, 30)):  # the first two margins exceed the window: clipped to it
        pieces = close_gaps_in_place(prob.copy(), 0.5, window=window, margin=margin)
        np.testing.assert_array_equal(pieces, whole)
        # a row's windows on several threads at once: each reads only the original values
        np.testing.assert_array_equal(close_gaps_in_place(prob.copy(), 0.5, window=window, margin=margin, workers=3), whole)


@pytest.mark.parametrize("bad", ["-0.1", "1", "nan"])
def test_bad_close_gaps_setting_is_refused(bad):
    with pytest.raises(ConfigError, match="predict.close_gaps"):
        load_config(None, [f"predict.close_gaps={bad}"])


def test_a_stacks_sections_side_by_side_give_each_sections_own_map_and_cells():
    from emunet.config import PredictConfig, SegmentConfig
    from emunet.infer.predict import postprocess_volume
    from emunet.infer.segment import seeded_watershed, segment_stack

    rng = np.random.default_rng(5)
    stack = np.stack([_cells(3, 4, side=20, rng=rng) for _ in range(5)])
    for page in stack:
        y, x = 20 * rng.integers(1, 3), rng.integers(2, 70)
        page[y - 2 : y + 2, x : x + 4] = 0.95
    pcfg, cfg = PredictConfig(smooth=1.0, close_gaps=0.5), SegmentConfig(min_size=20)
    alone = []
    for page in stack:
        one = page[None].copy()
        alone.append(postprocess_volume(one, pcfg)[0])
    together = postprocess_volume(stack.copy(), pcfg)
    np.testing.assert_array_equal(together, np.stack(alone))
    cells = segment_stack(together, None, None, cfg, warn=False)
    for page, own in zip(together, cells):
        np.testing.assert_array_equal(own, seeded_watershed(page, cfg.seed_threshold, cfg.min_size, cfg.seed_dynamics))
