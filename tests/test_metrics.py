import numpy as np
import pytest

from emunet.score.metrics import lab_dice, membrane_dice, membrane_iou, pixel_error


def test_lab_dice_on_a_hand_made_example():
    # 2x2 slice, labels (1 = cell): [[1, 0], [1, 1]]; predicted cell probabilities:
    prob = np.array([[0.8, 0.4], [1.0, 0.5]])
    label = np.array([[1, 0], [1, 1]])
    # softmax channels: cell p = prob, membrane q = 1 - prob; one-hot y both channels.
    # sum(p*y) = (0.8 + 1.0 + 0.5) [cell] + 0.6 [membrane at (0,1)] = 2.9
    # sum(p^2) = cell 0.64+0.16+1+0.25 = 2.05, membrane 0.04+0.36+0+0.25 = 0.65 -> 2.70
    # sum(y^2) = 4 (one hot per pixel)
    assert lab_dice(prob, label) == pytest.approx(2 * 2.9 / (2.70 + 4.0), abs=1e-12)


def test_lab_dice_perfect_and_worst():
    label = np.array([[1, 0], [0, 1]])
    assert lab_dice(label.astype(float), label) == pytest.approx(1.0)
    assert lab_dice(1.0 - label, label) == pytest.approx(0.0)


def test_hard_scores_on_a_hand_made_example():
    label = np.array([[1, 0, 0, 1]])
    prob = np.array([[0.9, 0.2, 0.7, 0.1]])  # membrane predicted at 1 and 3; true at 1 and 2
    assert membrane_dice(prob, label) == pytest.approx(2 * 1 / 4)
    assert membrane_iou(prob, label) == pytest.approx(1 / 3)
    assert pixel_error(prob, label) == pytest.approx(2 / 4)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        lab_dice(np.zeros((2, 2)), np.zeros((2, 3)))
