"""Smoothing of probability maps."""

import numpy as np
import pytest
from scipy import ndimage

from emunet.config import ConfigError, load_config
from emunet.postprocess import smooth_in_place


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
