"""The closing's seeds and distances, against the scikit-image and scipy functions they replace
(the oracles): the same peaks in the same order, the same distances bit for bit."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import peak_local_max

from emunet.infer.peaks import h_maxima, peaks_by_label
from emunet.infer.postprocess import _distance_to_membrane


def _oracle(image, labels, min_distance):
    return peak_local_max(image, min_distance=min_distance, labels=labels, exclude_border=False)


@pytest.mark.parametrize("kind", ["ties", "flat", "smooth", "specks"])
def test_peaks_are_scikit_images_on_random_images(kind):
    """Integer images tie everywhere; flat ones are one value per label (whose peaks are the
    pixels an opening removes); smooth ones have a few peaks per label; specks are labels of one
    or two pixels."""
    rng = np.random.default_rng(len(kind))
    for case in range(120):
        h, w = (int(n) for n in rng.integers(1, 45, 2))
        if kind == "ties":
            image = rng.integers(0, 3, (h, w)).astype(np.float64)
        else:
            image = ndimage.gaussian_filter(rng.random((h, w)), 1.5)
        labels = ndimage.label(rng.random((h, w)) > (0.7 if kind == "specks" else 0.3))[0]
        if kind == "flat":
            image = rng.integers(1, 4, labels.max() + 1)[labels].astype(np.float64)
        min_distance = int(rng.integers(1, 7))
        np.testing.assert_array_equal(peaks_by_label(image, labels, min_distance), _oracle(image, labels, min_distance),
                                      err_msg=f"{kind} case {case}, {h} x {w}, min_distance {min_distance}")


def test_peaks_of_a_distance_transform_are_scikit_images():
    """The closing's own input: the blurred distance transform of a cell-like interior."""
    rng = np.random.default_rng(5)
    walls = ndimage.gaussian_filter(rng.random((300, 260)), 6) > 0.5
    interior = ~(walls ^ ndimage.binary_erosion(walls, iterations=2))
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(interior), 1.0)
    labels = ndimage.label(interior)[0]
    found = peaks_by_label(distance, labels, 10)
    assert len(found) > 5
    np.testing.assert_array_equal(found, _oracle(distance, labels, 10))


def test_peaks_refuse_mismatched_shapes_and_take_empty_images():
    with pytest.raises(ValueError, match="one 2-D shape"):
        peaks_by_label(np.zeros((3, 4)), np.zeros((4, 3), int), 2)
    assert peaks_by_label(np.zeros((0, 4)), np.zeros((0, 4), int), 2).shape == (0, 2)
    assert peaks_by_label(np.ones((5, 5)), np.zeros((5, 5), int), 2).shape == (0, 2)


@pytest.mark.parametrize("fraction", [0.5, 0.99, 0.9999, 1.0, 0.0])
def test_distance_to_membrane_is_scipys_bit_for_bit(fraction):
    """Sparse membranes give long distances; none at all (1.0) falls back to scipy's."""
    rng = np.random.default_rng(int(fraction * 100))
    for h, w in [(1, 9), (9, 1), (64, 80), (257, 300)]:
        interior = rng.random((h, w)) < fraction
        np.testing.assert_array_equal(_distance_to_membrane(interior), ndimage.distance_transform_edt(interior))


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e9])
def test_h_maxima_are_scikit_images(scale):
    """Plateaus and ties (quarters), smooth domes, and scales where scikit-image's rounding
    allowance (relative to each value) decides: the same pixels."""
    from skimage.morphology import h_maxima as oracle

    rng = np.random.default_rng(int(np.log10(scale)) + 20)
    for case in range(150):
        h, w = (int(n) for n in rng.integers(1, 30, 2))
        image = (rng.integers(0, 5, (h, w)) / 4 if case % 2 else ndimage.gaussian_filter(rng.random((h, w)), 1.5)) * scale
        dynamics = [0.1, 0.25, 0.5, 0.03, 0.75][case % 5] * scale
        np.testing.assert_array_equal(h_maxima(image, dynamics), oracle(image, dynamics), err_msg=f"case {case}, {h} x {w}")


def test_h_maxima_of_a_probability_map_are_scikit_images():
    """The cells' own input: a smooth map with flat, saturated cell interiors."""
    from skimage.morphology import h_maxima as oracle

    rng = np.random.default_rng(3)
    prob = 1.0 / (1.0 + np.exp(-12 * (ndimage.gaussian_filter(rng.random((200, 240)), 4) - 0.5) / 0.03))
    prob = prob.astype(np.float32).astype(np.float64)
    found = h_maxima(prob, 0.2)
    assert found.sum() > 3
    np.testing.assert_array_equal(found, oracle(prob, 0.2))
