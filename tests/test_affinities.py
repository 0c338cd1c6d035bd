"""The affinity head and the cells: targets, the masked loss, the mutex watershed, the seeded
watershed, label images scored as the challenge scores them, and the command line end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage
import pytest
import tifffile
import torch

from emunet.model.affinities import affinity_loss, affinity_targets, check_offsets, interior_from_affinities, label_cells
from emunet.score.challenge import score_segmentation_stack
from emunet.cli import main
from emunet.errors import ConfigError
from emunet.model.unet import create_model
from emunet.infer.segment import SegmentConfig, fill_from_nearest, merge_small_segments, mutex_watershed, seeded_watershed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHORT = ((-1, 0), (0, -1), (0, -3))


def _two_cells() -> np.ndarray:
    """Cell 1 in columns 0-3, membrane in column 4, cell 2 in columns 5-9 (6 rows)."""
    cells = np.zeros((6, 10), np.int64)
    cells[:, :4], cells[:, 5:] = 1, 2
    return cells


def _targets(cells: np.ndarray, offsets=SHORT):
    target, mask = affinity_targets(torch.from_numpy(cells)[None], offsets)
    return target[0].numpy(), mask[0].numpy()


def test_two_cells_targets_and_border_mask():
    target, mask = _targets(_two_cells())
    up, left, left3 = target
    assert (up[1:, :4] == 1).all() and (up[1:, 5:] == 1).all() and (up[:, 4] == 0).all()  # membrane: with nothing
    assert (left[:, 1:4] == 1).all() and (left[:, 4:6] == 0).all() and (left[:, 6:] == 1).all()
    assert (left3[:, 3:4] == 1).all() and (left3[:, 5:8] == 0).all() and (left3[:, 8:] == 1).all()  # across the wall: apart
    # a pair whose partner is outside the tile has no target
    assert (mask[0, 0] == 0).all() and (mask[0, 1:] == 1).all()
    assert (mask[2][:, :3] == 0).all() and (mask[2][:, 3:] == 1).all()
    assert (target * (1 - mask) == 0).all()


def test_three_cells_meeting_targets():
    """Cells 1 (top left), 2 (top right) and 3 (bottom), walls one pixel wide."""
    cells = np.zeros((9, 9), np.int64)
    cells[:4, :4], cells[:4, 5:], cells[5:, :] = 1, 2, 3
    target, _ = _targets(cells, ((-1, 0), (0, -1), (-3, 0), (0, -3)))
    up, left, up3, left3 = target
    assert up[3, 2] == 1 and up[5, 2] == 0 and up[6, 2] == 1 and up[4, 2] == 0  # the horizontal wall
    assert left[2, 3] == 1 and left[2, 6] == 1 and left[2, 5] == 0 and left[7, 5] == 1  # wall between 1 and 2 only on top
    assert up3[5, 1] == 0 and up3[5, 7] == 0 and up3[8, 4] == 1  # cell 3 against 1 and 2 across the wall
    assert left3[1, 6] == 0 and left3[1, 3] == 1 and left3[7, 6] == 1
    # each tile's cells are its 4-connected components: diagonal neighbours are apart
    labels = torch.tensor([[[1, 0], [0, 1]]])
    assert label_cells(labels)[0].tolist() == [[1, 0], [0, 2]]


def test_loss_ignores_pairs_outside_the_tile():
    cells = torch.from_numpy(_two_cells())[None]
    _, mask = affinity_targets(cells, SHORT)
    logits = torch.randn(1, 3, 6, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = affinity_loss(logits, cells, SHORT)
    loss.backward()
    assert (logits.grad[mask == 0] == 0).all() and (logits.grad[mask == 1] != 0).any()
    moved = logits.detach() + 50.0 * (1 - mask)  # anything where there is no target
    assert torch.allclose(affinity_loss(moved, cells, SHORT), loss.detach())
    assert torch.allclose(affinity_loss(moved, cells, SHORT, "ce+dice"), affinity_loss(logits.detach(), cells, SHORT, "ce+dice"))
    # the loss falls as the logits agree with the targets
    target, _ = affinity_targets(cells, SHORT)
    assert affinity_loss(8 * (2 * target - 1), cells, SHORT) < 0.01 < loss


def test_mutex_watershed_keeps_cells_apart_across_a_gap_in_the_wall():
    """Three cells whose walls each have a gap; only the long-range edges know the cells apart."""
    cells = np.zeros((40, 40), np.int64)
    cells[:19, :19], cells[:19, 21:], cells[21:, :] = 1, 2, 3
    offsets = ((-1, 0), (0, -1), (-9, 0), (0, -9))
    target, _ = _targets(cells, offsets)
    # a network's confidences: nearest neighbours 0.9 / 0.1, the long range surer (0.98 / 0.02)
    affs = np.concatenate([0.1 + 0.8 * target[:2], 0.02 + 0.96 * target[2:]])
    affs[:2, 18:23, 5] = affs[:2, 5, 18:23] = 0.7  # gaps in both walls, as a faint membrane would leave
    affs[:2, 18:23, 30] = 0.8
    seg = mutex_watershed(affs, offsets, min_size=10)
    assert seg.dtype == np.uint32
    assert len(np.unique(seg[cells > 0])) == 3
    for cell in (1, 2, 3):
        assert len(np.unique(seg[cells == cell])) == 1
    # a threshold of the interior map made from the same affinities merges them through the gaps
    from scipy import ndimage
    interior = interior_from_affinities(affs, offsets)
    assert ndimage.label(interior > 0.5)[1] == 1


def test_long_range_edges_are_drawn_only_on_the_stride_grid():
    """One cell's pixels all joined, and one sure long-range edge that says two of its pixels are
    apart: it splits the cell where its pixels lie on the stride's grid (for the edge from (y, x)
    to (y - 3, x): y - 3 and x multiples of the stride, as the library anchors it to the array's
    first row and column, so a block cut at a multiple of the stride draws the section's edges),
    and is not drawn off it."""
    offsets = ((-1, 0), (0, -1), (-3, 0), (0, -3))
    affs = np.full((4, 16, 16), 0.9, np.float32)  # every edge joins ...
    cases = [((9, 8), 2, 2), ((8, 8), 2, 1), ((9, 9), 2, 1), ((8, 8), 1, 2), ((11, 8), 4, 2), ((9, 8), 4, 1), ((11, 6), 4, 1)]
    for start, stride, pieces in cases:
        apart = affs.copy()
        apart[2][start] = 0.0  # ... but the one from `start` to 3 rows above it
        seg = mutex_watershed(apart, offsets, long_range_stride=stride)
        assert len(np.unique(seg)) == pieces, (start, stride)
        if pieces == 2:
            assert seg[start] != seg[start[0] - 3, start[1]]


def test_interior_map_from_affinities():
    cells = _two_cells()
    interior = interior_from_affinities(_targets(cells, SHORT)[0], SHORT)
    assert interior.shape == cells.shape and interior.dtype == np.float32
    assert (interior[:, 4] == 0).all() and (interior[1:-1, 1:3] == 1).all() and (interior[:, 3] < 1).all()


def test_seeded_watershed_and_small_segments():
    prob = np.full((30, 30), 0.95, np.float32)
    prob[:, 14:16] = 0.05  # a wall
    prob[10, 15] = 0.6  # with a faint spot the seeds do not cross
    seg = seeded_watershed(prob, seed_threshold=0.9)
    assert seg.dtype == np.uint32 and len(np.unique(seg)) == 2 and (seg > 0).all()
    assert len(np.unique(seg[:, :14])) == 1 and seg[0, 0] != seg[0, 29]
    speck = np.ones((10, 10), np.uint32)
    speck[:, 5:] = 2
    speck[4, 2] = 3
    cleaned = merge_small_segments(speck, min_size=2)
    assert sorted(np.unique(cleaned)) == [1, 2] and cleaned[4, 2] == cleaned[0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_holes_filled_from_the_nearest_kept_pixel_as_scikit_image_expands_labels(seed):
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 160, 2)
    kept = rng.integers(1, 6, (h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w].astype(np.uint32)
    holes = ndimage.binary_dilation(rng.random((h, w)) < rng.uniform(0.02, 0.3), iterations=int(rng.integers(0, 4)))
    kept[holes] = 0
    kept[0, 0] = 7  # never all holes
    np.testing.assert_array_equal(fill_from_nearest(kept), expand_labels(kept, distance=h + w))


def test_offsets_are_checked():
    assert check_offsets([[-1, 0], [0, -1], [-5, 0]]) == ((-1, 0), (0, -1), (-5, 0))
    for bad, message in [([[0, -1], [-3, 0]], "nearest"), ([[-1, 0], [0, -1], [-1, 0]], "twice"),
                         ([[-1, 0], [0, 0], [0, -1]], "itself"), ("up", "pairs"), ([[-1.5, 0], [0, -1]], "integers")]:
        with pytest.raises(ConfigError, match=message):
            check_offsets(bad)
    model = create_model("unet_cpu", width=4, depth=2, head="affinities")
    assert model.cfg.num_classes == 8 and model(torch.zeros(1, 1, 32, 32)).shape == (1, 8, 32, 32)
    with pytest.raises(ConfigError, match="affinity head"):
        create_model("unet_cpu", offsets=[[-1, 0], [0, -1]])


def test_label_images_are_scored_as_the_challenge_scores_them():
    truth = (_two_cells() > 0).astype(np.int64)[None]
    perfect = score_segmentation_stack(_two_cells()[None], truth)
    merged = score_segmentation_stack(np.ones((1, 6, 10), np.int64), truth)
    assert perfect["v_rand"] == pytest.approx(1.0) and perfect["v_info"] == pytest.approx(1.0)
    assert merged["v_rand"] < 0.7 and merged["v_rand_split"] == pytest.approx(1.0)


TINY_AFFINITIES = ["model.width=4", "model.depth=2", "model.head=affinities", "model.offsets=[[-1,0],[0,-1],[-4,0],[0,-4]]",
                   "train.batch_size=2", "train.tile=64", "predict.tile=64", "predict.smooth=0", "predict.close_gaps=0",
                   "train.select_by=cells_v_rand", "segment.min_size=5", "train.precision=fp32"]


@pytest.mark.slow
def test_cli_affinity_run_predict_segment_and_score(small_isbi, tmp_path, capsys):
    out = tmp_path / "run"
    args = [f"data.images={small_isbi['images']}", f"data.labels={small_isbi['labels']}",
            f"data.test_images={small_isbi['test']}", *TINY_AFFINITIES, "train.steps=4", "train.val_every=2",
            "predict.tta=false"]  # plain by default, so that --tta below is the turned one
    assert main(["run", "-c", str(CONFIGS / "isbi-cpu.yaml"), "--out", str(out), "-q", *args]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert 0 <= report["mean"]["cells_v_rand"] <= 1 and report["cells"]["v_rand"] == report["mean"]["cells_v_rand"]
    assert "cells_v_rand" in report["slices"][0] and "lab_dice" in report["mean"]
    assert "val_cells_v_rand" in (out / "metrics.csv").read_text().splitlines()[0]
    capsys.readouterr()

    assert main(["evaluate", str(out / "best.safetensors"), "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "cells_v_rand" in printed and "the cells, label images" in printed
    assert json.loads((tmp_path / "e.json").read_text())["mean"]["cells_v_rand"] == pytest.approx(report["mean"]["cells_v_rand"])

    # the validation fold's slices, segmented, then scored from the written label image
    from emunet.train.sampling import fold_split
    val = fold_split(10, 1, 0.8)[1]
    images, labels = tifffile.imread(small_isbi["images"]), tifffile.imread(small_isbi["labels"])
    tifffile.imwrite(tmp_path / "val.tif", images[val])
    tifffile.imwrite(tmp_path / "val-labels.tif", labels[val])
    assert main(["predict", str(out / "best.safetensors"), str(tmp_path / "val.tif"), "-o", str(tmp_path / "p.tif"),
                 "--segment"]) == 0
    assert "uint32 cells (mutex watershed of the affinities)" in capsys.readouterr().out
    cells = tifffile.imread(tmp_path / "p-cells.tif")
    assert cells.dtype == np.uint32 and cells.shape == (2, 256, 256) and cells.min() >= 0
    assert main(["score", str(tmp_path / "p-cells.tif"), str(tmp_path / "val-labels.tif"), "--segmentation",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["v_rand"] == pytest.approx(report["mean"]["cells_v_rand"], abs=1e-9)

    # linked across sections: each section cut as before, one id per object over the stack
    assert main(["predict", str(out / "best.safetensors"), str(tmp_path / "val.tif"), "-o", str(tmp_path / "p.tif"),
                 "--segment", str(tmp_path / "linked.tif"), "--link-sections", "--overwrite"]) == 0
    assert "objects across sections" in capsys.readouterr().out
    linked = tifffile.imread(tmp_path / "linked.tif")
    for page, flat in zip(linked, cells):
        assert len(np.unique(np.stack([page.ravel(), flat.ravel()]), axis=1).T) == len(np.unique(flat))
    assert int(linked.max()) < int(cells[0].max()) + int(cells[1].max())  # some cells joined

    # OME-Zarr labels
    assert main(["predict", str(out / "best.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "t.tif"),
                 "--segment", str(tmp_path / "cells.ome.zarr"), "--min-size", "0", "-q"]) == 0
    import zarr
    group = zarr.open_group(str(tmp_path / "cells.ome.zarr"), mode="r")
    assert group.attrs["image-label"]["version"] == "0.4" and group["0"].dtype == np.uint32 and group["0"].shape == (2, 200, 300)

    # the cells never go over the input or the probabilities
    before = (tmp_path / "val.tif").read_bytes()
    for target, what in ((tmp_path / "val.tif", "input"), (tmp_path / "p.tif", "-o output")):
        assert main(["predict", str(out / "best.safetensors"), str(tmp_path / "val.tif"), "-o", str(tmp_path / "p.tif"),
                     "--segment", str(target)]) == 2
        assert f"written over the {what}" in capsys.readouterr().err
    assert (tmp_path / "val.tif").read_bytes() == before

    # test-time turns put each channel back in its own offset: affinities stay in [0, 1] and the
    # map (mean nearest-neighbour affinity) moves a little, not wholesale
    assert main(["predict", str(out / "best.safetensors"), str(tmp_path / "val.tif"), "-o", str(tmp_path / "x.tif"), "--tta", "-q"]) == 0
    turned, plain = tifffile.imread(tmp_path / "x.tif"), tifffile.imread(tmp_path / "p.tif")
    assert turned.shape == plain.shape and 0 <= turned.min() and turned.max() <= 1
    assert 0 < np.abs(turned - plain).mean() < 0.1


def test_flooding_from_seeds_equals_the_plain_watershed_where_heights_are_distinct():
    """The oracle: scikit-image's watershed given every seed pixel. On smooth random maps (many
    seeds, some touching the image's edges; distinct heights on the flood's steps) and one-row
    images, pixel for pixel; on maps in eight
    steps (ties everywhere) both are watersheds of the seeds that differ only where heights tie:
    every seed keeps its pixels, every pixel gets a seed, and few pixels differ."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from emunet.infer.segment import flood_from_seeds

    rng = np.random.default_rng(5)
    four = ndimage.generate_binary_structure(2, 1)
    smooth = [ndimage.gaussian_filter(rng.random((120, 97)), sigma) for sigma in (1.0, 2.5, 4.0)]
    for interior in smooth + [rng.random((1, 40)), rng.random((40, 1))]:
        # distinct heights on the flood's 1/65535 steps, spread over [0, 1] in the map's order
        rank = np.argsort(np.argsort(interior, axis=None)).reshape(interior.shape)
        interior = rank * (65535 // (interior.size - 1)) / 65535
        assert len(np.unique(interior)) == interior.size
        for level in (0.3, 0.6, 0.9):
            seeds, _ = ndimage.label(interior >= level, structure=four)
            plain = watershed(1.0 - interior, seeds, connectivity=1)
            np.testing.assert_array_equal(flood_from_seeds(1.0 - interior, seeds), plain, err_msg=f"{interior.shape} {level}")
    for interior in smooth:
        stepped = np.round((interior - interior.min()) / np.ptp(interior) * 8) / 8
        seeds, n = ndimage.label(stepped >= 0.6, structure=four)
        got, plain = flood_from_seeds(1.0 - stepped, seeds), watershed(1.0 - stepped, seeds, connectivity=1)
        assert (got[seeds > 0] == seeds[seeds > 0]).all() and set(np.unique(got)) == set(range(1, n + 1))
        assert (got != plain).mean() < 0.05
    whole = np.full((9, 9), 0.7)  # one seed that is the whole image
    assert (flood_from_seeds(1.0 - whole, np.ones((9, 9), np.int32)) == 1).all()


def test_membrane_model_segments_by_seeded_watershed(tiny_run, small_isbi, tmp_path, capsys):
    out = tiny_run
    assert "cells_v_rand" in json.loads((out / "eval.json").read_text())["mean"]
    assert main(["predict", str(out / "best.safetensors"), str(small_isbi["test"]), "-o", str(tmp_path / "p.tif"),
                 "--segment", str(tmp_path / "c.tif")]) == 0
    assert "seeded watershed" in capsys.readouterr().out
    written = tifffile.imread(tmp_path / "c.tif")
    assert written.dtype == np.uint32
    from emunet import Segmenter
    cells = Segmenter(out / "best.safetensors").cells(tifffile.imread(small_isbi["test"])[0])
    assert cells.shape == (200, 300) and (cells == written[0]).all()


def test_affinity_model_exports_to_onnx_saying_what_its_channels_are(tmp_path):
    import onnx

    from emunet.errors import UsageError
    from emunet.model.export import export_onnx

    model = create_model("unet_cpu", width=4, depth=2, head="affinities", offsets=[[-1, 0], [0, -1], [-5, 0]])
    meta = {p.key: p.value for p in onnx.load(str(export_onnx(model, tmp_path / "a.onnx"))).metadata_props}
    assert "(N, 3, H', W')" in meta["emunet.output"] and "[-5, 0]" in meta["emunet.output"]
    with pytest.raises(UsageError, match="sigmoid"):
        export_onnx(model, tmp_path / "b.onnx", softmax=True)


def test_a_cell_leaving_the_output_window_keeps_one_id():
    """A U-shaped cell whose bottom lies in the border that is cropped away: its two arms in the
    output window are one cell, because cells are found on the whole input tile."""
    from types import SimpleNamespace

    from emunet.train.augment import AugmentConfig
    from emunet.train.batches import make_batch_fn

    labels = np.zeros((1, 12, 12), np.int64)
    labels[0, 2:11, 3:5] = labels[0, 2:11, 7:9] = labels[0, 10:12, 3:9] = 1  # the bottom row is outside the crop
    generator = torch.Generator().manual_seed(0)
    sampler = SimpleNamespace(in_size=12, generator=generator,
                              sample=lambda n: (torch.zeros(n, 1, 12, 12), torch.from_numpy(labels).repeat(n, 1, 1)))
    off = AugmentConfig(flip=False, rotate90=False, brightness=0.0, elastic_std=0.0)
    _, out = make_batch_fn(sampler, off, 1, slice(0, 1), 8, torch.device("cpu"), torch.contiguous_format, cells=True)()
    assert out.shape == (1, 8, 8)
    left, right = out[0, 2, 2].item(), out[0, 2, 5].item()
    assert left > 0 and left == right
    assert affinity_targets(out, ((0, -3),))[0][0, 0, 2, 5] == 1  # the two arms belong together
    window_alone = label_cells(torch.from_numpy(labels[:, 2:10, 2:10]))
    assert window_alone[0, 2, 2] != window_alone[0, 2, 5]  # what labelling the output window alone would say


def _grid_of_cells(side: int = 60, cell: int = 20) -> np.ndarray:
    """Square cells of ``cell`` px, ids 1..n, walls (0) two pixels wide between them."""
    ids = np.arange(1, (side // cell) ** 2 + 1).reshape(side // cell, side // cell)
    cells = np.kron(ids, np.ones((cell, cell), np.int64))
    walls = np.zeros((side, side), bool)
    for k in range(cell, side, cell):
        walls[k - 1 : k + 1] = True
        walls[:, k - 1 : k + 1] = True
    cells[walls] = 0
    return cells


def _each_cell_whole(seg: np.ndarray, cells: np.ndarray) -> bool:
    ids = [np.unique(seg[cells == c]) for c in range(1, cells.max() + 1)]
    return all(len(i) == 1 for i in ids) and len({int(i[0]) for i in ids}) == cells.max()


def test_the_default_cells_of_an_unsure_map_are_whole():
    """A model on a stack unlike its training data is less sure: interiors at 0.75 with an
    organelle's dip to 0.55 across each cell, walls at 0.1. Seeds where the map says interior is
    likelier (0.5) keep each cell whole; seeds at 0.8 (the earlier default, on its rescaled
    scale) cut each cell in two along the dip."""
    cells = _grid_of_cells()
    prob = np.where(cells > 0, 0.75, 0.1).astype(np.float32)
    for k in range(10, 60, 20):
        prob[:, k][cells[:, k] > 0] = 0.55
    assert _each_cell_whole(seeded_watershed(prob, SegmentConfig().seed_threshold, SegmentConfig().min_size), cells)
    assert not _each_cell_whole(seeded_watershed(prob, 0.8, 50), cells)



def test_seeds_at_the_maps_dynamics_part_cells_whose_wall_is_faint_on_any_scale():
    """A model whose walls are faint on a stack: interiors at 0.95, walls dipping only to 0.7,
    never below the seed threshold. Seeds at a level merge every cell into one; seeds at the
    map's h-maxima of height 0.2 part them wherever the dip is, and keep a cell with a shallow
    organelle (a dip of 0.1) whole. The same on the map shifted down by 0.2: no level is set."""
    cells = _grid_of_cells()
    prob = np.where(cells > 0, 0.95, 0.7).astype(np.float32)
    prob[cells == 1] = 0.93  # interiors need not peak alike
    prob[5:9, 5:9][cells[5:9, 5:9] > 0] -= 0.1  # an organelle's shallow dip inside a cell
    assert len(np.unique(seeded_watershed(prob, 0.5, 50))) == 1  # one merged segment
    for shift in (0.0, 0.2):
        seg = seeded_watershed(prob - shift, 0.5, 50, seed_dynamics=0.2)
        assert _each_cell_whole(seg, cells), shift
    with pytest.raises(ConfigError, match="seed_dynamics"):
        SegmentConfig(seed_dynamics=1.0).validate()
    assert (seeded_watershed(np.full((20, 20), 0.3, np.float32), 0.5, 0, seed_dynamics=0.2) == 1).all()  # no interior

def _halves(nearest_across: float, long_across: float) -> np.ndarray:
    """Affinities (4, 32, 32) of one 32 x 32 image seen as two halves, columns 0-15 and 16-31:
    pixel pairs within a half sure (0.95), pairs across the middle as given."""
    offsets = ((-1, 0), (0, -1), (-9, 0), (0, -9))
    affs = np.full((4, 32, 32), 0.95, np.float32)
    for c, (_, dx) in enumerate(offsets):
        if dx:  # pairs (x, x + dx) with x on the right half and its partner on the left
            across = (np.arange(32) >= 16) & (np.arange(32) + dx < 16)
            affs[c][:, across] = nearest_across if abs(dx) == 1 else long_across
    return affs


def test_the_walls_that_no_membrane_supports_are_counted_by_hand():
    from emunet.infer.segment import unsupported_wall_share

    offsets = ((-1, 0), (0, -1))
    cells = np.array([[[1, 1, 2, 2], [1, 1, 2, 2]]], np.uint32)  # 2 rows: 2 horizontal wall pairs, none vertical
    affs = np.full((1, 2, 2, 4), 0.9, np.float32)
    affs[0, 1, 0, 2] = 0.1  # the (0, -1) pair at row 0 between columns 1 and 2: a membrane
    assert unsupported_wall_share(cells, affs, offsets, bias=0.5) == 0.5
    assert unsupported_wall_share(cells, affs, offsets, bias=0.95) == 0.0


def test_the_long_range_bias_is_lowered_only_where_walls_stand_on_no_membrane():
    """A model unsure across a cell's middle (long-range 0.47, nearest neighbours 0.52: no
    membrane) splits it at long-range bias 0.5; calibrated, the stack's walls are 100 % unsupported,
    so the bias falls to 0.45 and the cell is one. A real wall (nearest neighbours 0.05) stays."""
    from emunet.infer.segment import mutex_stack

    offsets = ((-1, 0), (0, -1), (-9, 0), (0, -9))
    unsure = _halves(nearest_across=0.52, long_across=0.47)[None]
    wall = _halves(nearest_across=0.05, long_across=0.1)[None]
    fixed = SegmentConfig(min_size=0, calibrate=False)
    assert mutex_stack(unsure, offsets, fixed)[0].max() == 2
    cells, bias = mutex_stack(unsure, offsets, SegmentConfig(min_size=0))
    assert (cells.max(), bias) == (1, 0.45)
    cells, bias = mutex_stack(wall, offsets, SegmentConfig(min_size=0))
    assert (cells.max(), bias) == (2, 0.5)
    assert (np.unique(cells[0][:, :16]).size, np.unique(cells[0][:, 16:]).size) == (1, 1)


def test_a_large_stack_is_calibrated_on_its_windows_and_cut_once_at_their_bias():
    """12 small sections are more than the 8 calibration windows, which take sections 0, 2, 3, 5,
    6, 8, 9 and 11 (evenly through the stack, each whole). Where those hold the real walls, the
    bias stays 0.5 (the whole stack's walls would be a third unsupported) and the other sections'
    unsure cells split; where those hold the unsure cells, the bias falls to 0.45 for every section."""
    from emunet.infer.segment import calibration_windows, mutex_stack

    offsets = ((-1, 0), (0, -1), (-9, 0), (0, -9))
    unsure = _halves(nearest_across=0.52, long_across=0.47)
    wall = _halves(nearest_across=0.05, long_across=0.1)
    windows = [0, 2, 3, 5, 6, 8, 9, 11]
    assert calibration_windows((12, 32, 32)) == [(z, 0, 32, 0, 32) for z in windows]
    for calibrated_on, elsewhere, bias in ((wall, unsure, 0.5), (unsure, wall, 0.45)):
        stack = np.stack([calibrated_on if z in windows else elsewhere for z in range(12)])
        cells, chosen = mutex_stack(stack, offsets, SegmentConfig(min_size=0))
        assert chosen == bias
        for z in range(12):  # unsure cells are one only at 0.45; real walls always part two
            is_wall = (z in windows) == (calibrated_on is wall)
            assert cells[z].max() == (2 if is_wall or bias == 0.5 else 1), z
    assert calibration_windows((1, 2048, 1100))[:3] == [(0, 0, 512, 0, 512), (0, 0, 512, 512, 1024), (0, 512, 1024, 0, 512)]
    assert len(calibration_windows((1, 2048, 1100))) == 8  # 4 x 2 squares of 512 (the last 76 columns in none)


def test_ids_are_renumbered_as_their_sorted_values_rank():
    """The oracle: np.unique's inverse (ranks among the sorted ids), 0 kept where present."""
    from emunet.infer.segment import _consecutive

    rng = np.random.default_rng(3)
    for labels in (rng.integers(0, 40, (17, 23)), rng.integers(5, 9, (8, 8)), rng.integers(0, 2**40, (6, 7)),
                   np.array([[7]]), np.zeros((3, 3), np.int64), rng.integers(-3, 4, (5, 5)), rng.integers(1, 1000, (4, 4))):
        _, inverse = np.unique(labels, return_inverse=True)
        expected = inverse.reshape(labels.shape) + (0 if (labels == 0).any() else 1)
        got = _consecutive(labels)
        assert got.dtype == np.uint32 and np.array_equal(got, expected), labels
