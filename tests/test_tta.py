"""Test-time augmentation of membrane maps and affinities (infer/tta.py)."""

import numpy as np
import pytest
import torch

from emunet.errors import ConfigError
from emunet.infer.tiling import predict_image
from emunet.infer.tta import (DIHEDRAL, add_turned_affinities, dihedral, predict_image_tta, predict_region_tta,
                              turned_offset, undo_dihedral)
from emunet.model.affinities import DEFAULT_OFFSETS, affinity_targets
from emunet.model.unet import create_model

OFFSETS = ((-1, 0), (0, -1), (-3, 0), (0, -3), (-7, 0), (0, -7))


def _true_affinities(cells: np.ndarray, offsets) -> np.ndarray:
    target, _ = affinity_targets(torch.from_numpy(cells)[None], offsets)
    return target[0].numpy()


@pytest.mark.parametrize("k,flip", DIHEDRAL)
def test_a_transform_undoes_and_moves_offsets_as_the_pixels_move(rng, k, flip):
    image = rng.random((3, 5, 7))
    np.testing.assert_array_equal(undo_dihedral(dihedral(image, k, flip), k, flip), image)
    # a marked pair of pixels (2, 3) -> (2 + dy, 3 + dx) lands where the turned offset says
    for dy, dx in ((-1, 0), (0, -1), (-2, 1)):
        marks = np.zeros((7, 9))
        marks[2, 3], marks[2 + dy, 3 + dx] = 1, 2
        turned = dihedral(marks, k, flip)
        (a,), (b,) = (np.argwhere(turned == v) for v in (1, 2))
        assert tuple(b - a) == turned_offset((dy, dx), k, flip)


@pytest.mark.parametrize("region", [(0, 40, 0, 48), (5, 23, 11, 30), (33, 40, 0, 9)])
def test_true_affinities_of_every_transformed_image_turn_back_to_the_image_s_own(rng, region):
    # the oracle: affinities computed on the labels directly; each transform's affinities of the
    # transformed labels, turned back and put in their channels, must give them again exactly
    cells = (rng.random((40, 48)) * 6).astype(np.int64) * (rng.random((40, 48)) > 0.2)
    cells = np.repeat(np.repeat(cells[::4, ::4], 4, 0), 4, 1)  # blocks: pairs often in one cell
    want = _true_affinities(cells, OFFSETS)
    y0, y1, x0, x1 = region
    grown = (max(0, y0 - 7), min(40, y1 + 7), max(0, x0 - 7), min(48, x1 + 7))
    total = np.zeros((len(OFFSETS), y1 - y0, x1 - x0))
    counts = np.zeros(total.shape)
    for k, flip in DIHEDRAL:
        back = undo_dihedral(_true_affinities(dihedral(cells, k, flip), OFFSETS), k, flip)
        add_turned_affinities(total, counts, back[:, grown[0]:grown[1], grown[2]:grown[3]], (k, flip), OFFSETS,
                              grown, region, cells.shape)
    assert counts.min() >= 4  # every transform that keeps a pair's direction counts, at the edges too
    np.testing.assert_array_equal(total / counts, want[:, y0:y1, x0:x1])


def test_affinity_tta_commutes_with_a_turn_of_the_image(rng):
    torch.manual_seed(0)
    net = create_model("unet_cpu", width=4, depth=2, head="affinities", offsets=[list(o) for o in OFFSETS]).eval()
    image = rng.random((40, 56), dtype=np.float32)
    averaged = predict_image_tta(net, image, tile=32, margin=8)
    assert averaged.shape == (len(OFFSETS), 40, 56)
    assert not np.allclose(averaged, predict_image(net, image, tile=32, margin=8), atol=1e-3)
    turned = predict_image_tta(net, np.ascontiguousarray(np.rot90(image)), tile=32, margin=8)
    for j, offset in enumerate(OFFSETS):
        vy, vx = turned_offset(offset, 3, False)  # the turned image's pair (q', q' + offset) in the image's frame
        if (vy, vx) in OFFSETS:
            np.testing.assert_allclose(turned[j], np.rot90(averaged[OFFSETS.index((vy, vx))]), atol=1e-5)
            continue
        c = OFFSETS.index((-vy, -vx))  # the reversed pair: the image's channel c read at the partner
        cy, cx = OFFSETS[c]
        shifted = np.full((40, 56), np.nan, np.float32)
        shifted[max(0, cy):40 + min(0, cy), max(0, cx):56 + min(0, cx)] = \
            averaged[c, max(0, -cy):40 + min(0, -cy), max(0, -cx):56 + min(0, -cx)]
        expect = np.rot90(shifted)
        inside = ~np.isnan(expect)
        assert inside.mean() > 0.8
        np.testing.assert_allclose(turned[j][inside], expect[inside], atol=1e-5)


@pytest.mark.parametrize("head", ["membrane", "affinities"])
def test_a_region_gets_the_values_of_the_whole_image(rng, head):
    torch.manual_seed(1)
    extra = dict(head="affinities", offsets=[list(o) for o in OFFSETS]) if head == "affinities" else {}
    net = create_model("unet_cpu", width=4, depth=2, **extra).eval()
    image = rng.random((50, 61), dtype=np.float32)
    whole = predict_image_tta(net, image, tile=32, margin=8)
    region = (13, 41, 7, 30)
    part = predict_region_tta(net, lambda rows, cols: [image[rows, cols]], image.shape, region, tile=32, margin=8)
    np.testing.assert_allclose(part, whole[..., 13:41, 7:30], atol=1e-6)


def test_offsets_that_turns_do_not_map_onto_each_other_are_refused(rng):
    net = create_model("unet_cpu", width=4, depth=2, head="affinities", offsets=[[-1, 0], [0, -1], [-5, 0]]).eval()
    with pytest.raises(ConfigError, match=r"predict.tta .*\[-5, 0\]"):
        predict_image_tta(net, rng.random((32, 32), dtype=np.float32), tile=32, margin=8)
    # the default offsets do
    net = create_model("unet_cpu", width=4, depth=2, head="affinities").eval()
    assert net.cfg.offsets and tuple(map(tuple, net.cfg.offsets)) == DEFAULT_OFFSETS
    assert predict_image_tta(net, rng.random((32, 32), dtype=np.float32), tile=32, margin=8).shape == (8, 32, 32)
