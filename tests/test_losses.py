"""Training losses on tiny hand-checkable tensors."""

import math

import pytest
import torch

from emunet.config import ConfigError, load_config
from emunet.train.losses import membrane_skeleton, segmentation_loss, skeleton_recall_loss, soft_dice_loss


def _example():
    # two pixels: a membrane (class 0) pixel and an interior (class 1) pixel
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    p_membrane = math.exp(2) / (math.exp(2) + 1)  # softmax of the first pixel, class 0
    p_interior = math.e / (math.e + 1)  # second pixel, class 1
    return logits, labels, -math.log(p_membrane), -math.log(p_interior)


def test_cross_entropy_is_the_mean_over_pixels():
    logits, labels, l0, l1 = _example()
    assert segmentation_loss(logits, labels).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_membrane_weight_is_a_weighted_mean():
    logits, labels, l0, l1 = _example()
    got = segmentation_loss(logits, labels, membrane_weight=3.0).item()
    assert got == pytest.approx((3 * l0 + l1) / 4, rel=1e-6)


def test_membrane_weight_moves_gradient_to_membrane_pixels():
    logits, labels, _, _ = _example()
    grads = []
    for w in (1.0, 3.0):
        x = logits.clone().requires_grad_(True)
        segmentation_loss(x, labels, membrane_weight=w).backward()
        grads.append(x.grad[0, :, 0].abs().sum(0))  # per-pixel gradient size
    ratio_plain = (grads[0][0] / grads[0][1]).item()
    ratio_weighted = (grads[1][0] / grads[1][1]).item()
    assert ratio_weighted == pytest.approx(3 * ratio_plain, rel=1e-5)


def test_soft_dice_of_a_confident_right_answer_is_near_zero():
    labels = torch.tensor([[[0, 1], [1, 0]]])
    logits = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, labels).item() < 1e-3
    assert segmentation_loss(logits, labels, "ce+dice").item() < 1e-3


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_membrane_weight_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match="membrane_weight"):
        load_config(None, [f"train.membrane_weight={bad}"])


def _two_cells():
    """Two cells side by side, split by a 5 px vertical membrane (optionally with a gap)."""
    labels = torch.ones(1, 32, 32, dtype=torch.long)
    labels[:, :, 14:19] = 0
    return labels


def test_membrane_skeleton_is_the_centre_line_of_the_membrane():
    skel = membrane_skeleton(_two_cells())
    assert skel.shape == (1, 32, 32) and skel.dtype == torch.float32
    assert skel[0, 1:-1, 16].all()  # the centre column (thinning stops a pixel short of the tile's edge)
    assert not skel[0, :, :14].any() and not skel[0, :, 19:].any()  # never on the cells
    assert skel[0, 5].sum() == 3  # widened to 3 px across the line
    assert not membrane_skeleton(torch.ones(2, 8, 8, dtype=torch.long)).any()  # no membrane, no skeleton


def test_skeleton_recall_charges_a_gap_in_the_membrane_by_its_length():
    labels = _two_cells()
    logits = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 8
    skel = membrane_skeleton(labels)
    assert skeleton_recall_loss(logits, skel).item() < 1e-3

    def with_gap(rows: int) -> float:
        gapped = logits.clone()  # interior predicted straight across the membrane
        gapped[0, :, 10 : 10 + rows, 14:19] = gapped[0, :, 10 : 10 + rows, 14:19].flip(0)
        return skeleton_recall_loss(gapped, skel).item()

    assert with_gap(3) == pytest.approx(3 / 30, abs=0.01)  # 3 of the centre line's 30 rows are missed
    assert with_gap(6) == pytest.approx(2 * with_gap(3), rel=0.02)


def test_skeleton_weight_adds_the_recall_term():
    labels = _two_cells()
    logits = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = segmentation_loss(logits, labels).item()
    recall = skeleton_recall_loss(logits, membrane_skeleton(labels)).item()
    assert segmentation_loss(logits, labels, skeleton_weight=0.5).item() == pytest.approx(plain + 0.5 * recall, rel=1e-6)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_skeleton_weight_must_be_a_non_negative_number(bad):
    with pytest.raises(ConfigError, match="skeleton_weight"):
        load_config(None, [f"train.skeleton_weight={bad}"])
