"""The watershed the closing and the cells run on, against scikit-image's watershed (the oracle)
and against plain distances on a plateau."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from emunet.infer.flood import STEPS, flood


def _distinct_marker_heights(rng, heights, markers, top):
    """Give the marker pixels distinct heights: tied markers are the one place the two may differ."""
    where = np.flatnonzero(markers)
    heights.flat[where] = rng.choice(top, size=len(where), replace=False)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 4), (np.uint8, 256), (np.uint16, 5), (np.uint16, STEPS)])
def test_flood_is_scikit_images_watershed_on_whole_steps(dtype, top):
    """Pixel for pixel on random integer heights (ties everywhere with few steps), repeated ids,
    masks, and one-row and one-column images."""
    rng = np.random.default_rng(int(top))
    for case in range(150):
        h, w = (1, int(rng.integers(1, 30))) if case % 10 == 0 else (int(rng.integers(1, 30)), 1) if case % 10 == 1 \
            else tuple(int(n) for n in rng.integers(2, 40, 2))
        heights = rng.integers(0, top, (h, w)).astype(dtype)
        markers = np.where(rng.random((h, w)) < 0.03, rng.integers(1, 6, (h, w)), 0).astype(np.int32)
        markers.flat[rng.integers(h * w)] = 7
        markers[rng.random((h, w)) < 0.01 * (case % 3 == 0)] = 0
        if (markers > 0).sum() > top:
            continue
        _distinct_marker_heights(rng, heights, markers, top)
        mask = rng.random((h, w)) > 0.25 if case % 2 else None
        np.testing.assert_array_equal(flood(heights, markers, mask), watershed(heights, markers, connectivity=1, mask=mask),
                                      err_msg=f"case {case}, {h} x {w}")


def test_flood_of_floats_on_whole_steps_is_scikit_images_and_near_it_between():
    """Floats that lie on the 1/65535 steps give scikit-image's result exactly; smooth floats
    between them (ties only closer than a step) differ in a handful of pixels."""
    rng = np.random.default_rng(3)
    for sigma in (1.0, 3.0):
        smooth = ndimage.gaussian_filter(rng.random((150, 130)), sigma)
        stepped = np.round((smooth - smooth.min()) / np.ptp(smooth) * (STEPS - 1)).astype(np.float32) / (STEPS - 1)
        markers = np.zeros(stepped.shape, np.int32)
        peaks = np.argwhere(stepped == ndimage.minimum_filter(stepped, 9))
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        heights = stepped.copy()
        _distinct_marker_heights(rng, heights, markers, STEPS)
        heights[markers > 0] /= STEPS - 1
        np.testing.assert_array_equal(flood(heights, markers), watershed(heights, markers, connectivity=1))
        floats = (smooth - smooth.min()) / np.ptp(smooth)
        assert (flood(floats, markers) != watershed(floats, markers, connectivity=1)).mean() < 0.002


def test_flood_on_a_plateau_takes_each_pixel_to_its_nearest_marker():
    """An independent oracle: on equal heights the flood is a breadth-first search, so a pixel
    strictly nearer (4-connected steps) to one marker than to every other is that marker's."""
    heights = np.zeros((40, 50), np.uint8)
    spots = [(3, 4), (20, 40), (35, 10), (10, 25)]
    markers = np.zeros(heights.shape, np.int32)
    for index, (y, x) in enumerate(spots, start=1):
        markers[y, x] = index
    yy, xx = np.indices(heights.shape)
    steps = np.stack([np.abs(yy - y) + np.abs(xx - x) for y, x in spots])
    ordered = np.sort(steps, axis=0)
    clear = ordered[0] < ordered[1]
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(flood(heights, markers)[clear], np.argmin(steps, axis=0)[clear] + 1)


def test_flood_leaves_the_unreachable_and_the_masked_at_zero():
    heights = np.zeros((5, 7), np.float32)
    markers = np.zeros((5, 7), np.int32)
    markers[0, 0] = 3
    mask = np.ones((5, 7), bool)
    mask[:, 3] = False  # a wall no flood crosses
    labels = flood(heights, markers, mask)
    assert (labels[:, :3] == 3).all() and (labels[:, 3:] == 0).all()
    assert (flood(heights, np.zeros_like(markers)) == 0).all()


@pytest.mark.parametrize("bad", [np.array([[0.5, 1.5]]), np.array([[np.nan, 0.5]]), np.array([[-0.1, 0.5]])])
def test_flood_refuses_heights_outside_zero_to_one(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flood(bad, np.array([[1, 0]], np.int32))


def test_flood_refuses_negative_marker_ids():
    """Ids below 0 mark walls inside the flood: a caller's negative id would silently start nothing."""
    with pytest.raises(ValueError, match="positive"):
        flood(np.zeros((2, 2), np.uint8), np.array([[1, 0], [0, -2]], np.int32))
