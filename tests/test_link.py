"""Cells in 3-D: sections' cells linked by overlap (emunet.infer.link)."""

import numpy as np
import pytest

from emunet.config import SegmentConfig
from emunet.infer.link import joined_ids, link_sections, matches, overlaps_of
from emunet.infer.segment import segment_stack


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _drifting_objects(sections=6, seed=0):
    """3-D truth: discs that drift a few pixels per section, some starting or ending midway;
    returned with each section's 2-D ids shuffled (what a per-section segmentation gives)."""
    rng = np.random.default_rng(seed)
    shape = (96, 96)
    truth = np.zeros((sections, *shape), np.uint32)
    for obj in range(1, 10):  # a 3 x 3 grid 30 px apart: discs of radius 8 drifting <= 6 px never touch
        centre = np.array([18 + 30 * ((obj - 1) // 3), 18 + 30 * ((obj - 1) % 3)]) + rng.uniform(-1, 1, 2)
        drift = rng.uniform(-1, 1, 2)
        first, last = (1, sections - 2) if obj % 3 == 0 else (0, sections)
        for z in range(first, last):
            truth[z][_disc(shape, centre + z * drift, 8)] = obj
    per_section = np.zeros_like(truth)
    for z in range(sections):
        ids = np.unique(truth[z][truth[z] > 0])
        shuffled = rng.permutation(len(ids)) + 1
        for old, new in zip(ids, shuffled):
            per_section[z][truth[z] == old] = new
    return truth, per_section


def _same_partition(a, b):
    """Every id of ``a`` is exactly one id of ``b`` and back (a bijection of the labelled pixels)."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(pairs.T) == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_linking_recovers_objects_that_drift_and_end():
    truth, per_section = _drifting_objects()
    linked = link_sections(per_section)
    assert _same_partition(linked, truth)
    assert linked.dtype == np.uint32 and set(np.unique(linked)) == set(range(int(linked.max()) + 1))


def test_a_branch_keeps_one_id_and_never_merges_two_objects():
    below = np.zeros((40, 40), np.uint32)
    below[5:35, 5:35] = 1
    above = np.zeros_like(below)
    above[5:35, 5:22] = 1  # the larger branch
    above[5:35, 22:35] = 2
    linked = link_sections(np.stack([below, above]))
    assert linked[1, 10, 10] == linked[0, 10, 10]
    assert linked[1, 10, 30] not in (0, linked[0, 10, 10])


def test_cells_that_barely_touch_stay_apart():
    below = np.zeros((40, 40), np.uint32)
    below[0:20, 0:20] = 1
    above = np.zeros_like(below)
    above[15:40, 15:40] = 1  # IoU 25 / 1000: a neighbour, not the same cell
    assert len(np.unique(link_sections(np.stack([below, above])))) == 3
    sizes = np.bincount(np.concatenate([below.ravel(), above.ravel() * 2]))
    shifted = np.where(above > 0, 2, 0)
    assert matches(overlaps_of(below, shifted), sizes, 0.3) == []
    assert matches(overlaps_of(below, shifted), sizes, 0.01) == [(1, 2)]


def test_joined_ids_follow_chains_and_number_by_first_id():
    lut = joined_ids(6, [(5, 6), (1, 3), (3, 4)])
    assert lut.tolist() == [0, 1, 2, 1, 1, 3, 3]


def test_segment_stack_links_when_asked():
    interior = np.zeros((3, 64, 64), np.float32)
    interior[:, 4:30, 4:60] = interior[:, 34:60, 4:60] = 1.0  # two cells, the same in every section
    per_section = segment_stack(interior, None, None, SegmentConfig(min_size=0))
    assert [int(page.max()) for page in per_section] == [2, 2, 2]
    linked = segment_stack(interior, None, None, SegmentConfig(min_size=0, link_sections=True))
    assert int(linked.max()) == 2 and (linked[0] == linked[2]).all()


def test_link_iou_outside_its_range_is_refused():
    with pytest.raises(Exception, match="segment.link_iou"):
        SegmentConfig(link_iou=0.0).validate()


def test_tuple_counts_equal_numpys_unique_of_columns():
    rng = np.random.default_rng(3)
    columns = [rng.integers(0, n, 5000) * 7919 for n in (30, 5, 200)]
    from emunet.infer.link import tuple_counts

    got, counts = tuple_counts(*columns)
    want, want_counts = np.unique(np.stack(columns), axis=1, return_counts=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, want_counts)
