"""What the commands say: warnings where the input is probably not what the user meant, clear
errors for label images scored as maps, numbers printed as people write them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from emunet.cli import main
from emunet.cli.options import EPILOG
from emunet.config import Config


@pytest.fixture(scope="module")
def labels(isbi_dir) -> np.ndarray:
    return tifffile.imread(isbi_dir / "train-labels.tif")[:2, :128, :128]


def test_three_sections_saved_without_metadata_draw_a_warning(isbi_dir, tmp_path, caplog):
    from emunet.io.data import read_images

    stack = tifffile.imread(isbi_dir / "train-volume.tif")[:3, :64, :64]
    tifffile.imwrite(tmp_path / "three.tif", stack)  # tifffile takes 3 planes as one RGB image
    volume = read_images(tmp_path / "three.tif")
    assert len(volume) == 1
    assert "three.tif: read as one RGB image and reduced to grey; if these are 3 sections" in caplog.text
    caplog.clear()
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    assert len(read_images(tmp_path / "stack.tif")) == 3 and "reduced to grey" not in caplog.text


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
def test_an_integer_label_image_scored_as_a_map_is_a_clear_error(labels, tmp_path, capsys, dtype):
    from skimage.measure import label

    cells = np.stack([label(s > 0, connectivity=1) for s in labels]).astype(dtype)
    assert 10 < cells.max() < 200
    tifffile.imwrite(tmp_path / "cells.tif", cells, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    assert main(["score", str(tmp_path / "cells.tif"), str(tmp_path / "labels.tif")]) == 2
    err = capsys.readouterr().err
    assert "look like a label image" in err and "--segmentation" in err
    assert main(["score", str(tmp_path / "cells.tif"), str(tmp_path / "labels.tif"), "--segmentation"]) == 0


def test_an_8_bit_map_is_still_a_map(labels, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "map.tif", labels, photometric="minisblack")  # a 0/255 map: the labels themselves
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    assert main(["score", str(tmp_path / "map.tif"), str(tmp_path / "labels.tif")]) == 0
    assert "Maximal V_rand after thinning: 1.000000" in capsys.readouterr().out


def test_an_inverted_map_draws_a_warning_and_thresholds_print_plainly(labels, tmp_path, capsys, caplog):
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "inv.tif", (labels == 0).astype(np.float32))
    assert main(["score", str(tmp_path / "inv.tif"), str(tmp_path / "labels.tif")]) == 0
    captured = capsys.readouterr()
    assert "inv.tif: the map looks inverted" in caplog.text and "1 - map" in caplog.text
    caplog.clear()
    assert "0.30000000000000004" not in captured.out
    rows = [line.split()[0] for line in captured.out.splitlines()[1:13]]
    assert rows[1:] == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]
    tifffile.imwrite(tmp_path / "right.tif", (labels > 0).astype(np.float32))
    assert main(["score", str(tmp_path / "right.tif"), str(tmp_path / "labels.tif")]) == 0
    assert "inverted" not in caplog.text


def test_an_undefined_score_is_not_printed_as_nan(labels, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "ones.tif", np.ones(labels.shape, np.float32))
    assert main(["score", str(tmp_path / "ones.tif"), str(tmp_path / "labels.tif")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "split undefined" in out


def test_a_slice_named_twice_is_refused(labels, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "map.tif", (labels > 0).astype(np.float32))
    assert main(["score", str(tmp_path / "map.tif"), str(tmp_path / "labels.tif"), "--slices", "1,1"]) == 2
    assert "--slices names slice 1 more than once" in capsys.readouterr().err


def test_the_help_epilogue_names_every_config_section(capsys):
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "out_dir"]
    assert all(name in EPILOG for name in sections), sections
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "segment, storage" in capsys.readouterr().out


def test_an_under_trained_map_still_seeds_its_cells_and_says_so(labels, caplog):
    from scipy import ndimage

    from emunet.config import SegmentConfig
    from emunet.infer.segment import segment_stack

    truth = np.stack([ndimage.label(s > 0, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])[0] for s in labels])
    weak = np.where(labels > 0, 0.746, 0.1).astype(np.float32)  # never reaches the seeds at 0.8
    cells = segment_stack(weak, None, None, SegmentConfig(seed_threshold=0.8, min_size=0))
    for got, want in zip(cells, truth):
        assert int(got.max()) == int(want.max()) > 5  # one cell per true region, not one per slice
    assert "never reaches segment.seed_threshold 0.8 (maximum 0.746)" in caplog.text


def test_a_slice_that_comes_out_as_one_segment_is_named_with_the_setting_to_change(caplog):
    from emunet.config import SegmentConfig
    from emunet.infer.segment import segment_stack
    from emunet.model.affinities import DEFAULT_OFFSETS

    flat = np.full((2, 32, 32), 0.3, np.float32)
    cells = segment_stack(flat, None, None, SegmentConfig())
    assert cells.max() == 1 and "2 slices (0, 1) came out as one or two segments; lower segment.seed_threshold" in caplog.text
    caplog.clear()
    joined = np.full((1, len(DEFAULT_OFFSETS), 32, 32), 0.9, np.float32)
    cells = segment_stack(joined.mean(axis=1), joined, DEFAULT_OFFSETS, SegmentConfig())
    assert cells.max() == 1 and "slice 0 came out as one or two segments; raise segment.bias" in caplog.text
