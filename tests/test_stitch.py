"""Cells of volumes block by block: stitched across block seams and linked across sections, equal
to each section segmented whole (emunet.infer.stitch)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from skimage.metrics import adapted_rand_error

from emunet.cli import main
from emunet.infer.blockwise import predict_to_ome_zarr
from emunet.infer.predictor import Predictor


@pytest.fixture(scope="module")
def sections(isbi_dir, tmp_path_factory):
    """Two ISBI sections (512 x 512) as a TIFF and as a Zarr volume of 128-pixel chunks."""
    folder = tmp_path_factory.mktemp("sections")
    stack = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    tifffile.imwrite(folder / "two.tif", stack)
    zarr.open_array(str(folder / "two.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    return folder


def _whole_section_cells(model: str, sections, **segment):
    predictor = Predictor.load(model, "cpu", "fp32", ["predict.close_gaps=0"] + [f"segment.{k}={v}" for k, v in segment.items()])
    return predictor, predictor.cells_of(predictor.predict(predictor.read(sections / "two.tif")))


def _error(expected: np.ndarray, got: np.ndarray) -> float:
    """skimage's adapted Rand error (1 - F-score of the pairs of pixels in one cell)."""
    return adapted_rand_error(expected.astype(np.uint64), got.astype(np.uint64))[0]


@pytest.mark.slow
@pytest.mark.parametrize("model, blocks", [("isbi-membranes", (256, 128)), ("isbi-cells", (256,)), ("sstem-membranes", (256,))])
def test_blockwise_cells_equal_whole_section_cells(model, blocks, sections, tmp_path):
    """Both heads, and the membrane head's seeds at a level and at the map's h-maxima
    (sstem-membranes); at 128 the halo reaches past the next block (on this machine the
    partitions are identical: docs/volumes.md)."""
    predictor, whole = _whole_section_cells(model, sections)
    assert [int(page.max()) for page in whole] > [100, 100]
    for block in blocks:
        out = tmp_path / f"cells-{block}.ome.zarr"
        result = predict_to_ome_zarr([model], str(sections / "two.zarr"), out, predictor.settings, "fp32", device="cpu",
                                     block=block, chunk=128, dtype="float32", progress=False, segment=predictor.segment)
        got = zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...]
        assert got.dtype == np.uint32 and got.shape == whole.shape and result.cells == int(got.max())
        assert not set(np.unique(got[0])) & set(np.unique(got[1])) - {0}  # ids unique in the volume
        for z in range(2):
            assert _error(whole[z], got[z]) < 0.005, (model, block, z)
        # the cells a seam cut are one id again: as many cells as the whole sections have, to a few
        assert abs(len(np.unique(got)) - 1 - sum(int(page.max()) for page in whole)) <= 0.02 * got.max()
    attrs = zarr.open_group(str(out), mode="r")
    assert attrs["labels"].attrs["labels"] == ["cells"] and attrs["labels/cells"].attrs["image-label"]["version"] == "0.4"


@pytest.mark.slow
def test_blockwise_cells_lower_the_long_range_bias_as_whole_sections_do(isbi_dir, tmp_path, monkeypatch):
    """Two VNC sections whose walls at long-range bias 0.5 are 13 % unsupported: the volume is
    calibrated before any block on the windows a stack in memory uses (here the two sections
    whole), cut once at the lower bias that the whole sections choose, and its cells are theirs;
    a rerun cuts nothing again, and takes the bias chosen without calibrating again."""
    from emunet.infer import segment
    from emunet.infer.segment import mutex_stack

    stack = tifffile.imread(isbi_dir.parent / "vnc-stack1" / "stack1-volume.tif")[8:10, 512:, :512]
    zarr.open_array(str(tmp_path / "vnc.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    predictor = Predictor.load("isbi-cells", "cpu", "fp32", ["predict.close_gaps=0"])
    prediction = predictor.predict(predictor.read(stack))
    whole, bias = mutex_stack(prediction.affinities, prediction.offsets, predictor.segment)
    assert bias < 0.5
    out = tmp_path / "vnc.ome.zarr"
    for run in range(2):
        if run:
            monkeypatch.setattr(segment, "calibrated_bias", lambda *args: pytest.fail("the rerun calibrated again"))
        result = predict_to_ome_zarr(["isbi-cells"], str(tmp_path / "vnc.zarr"), out, predictor.settings, "fp32",
                                     device="cpu", block=256, chunk=128, progress=False, segment=predictor.segment)
        assert result.long_range_bias == bias
        got = zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...]
        for z in range(2):
            assert _error(whole[z], got[z]) < 0.005, z
    assert result.skipped == result.blocks == 8


@pytest.mark.slow
def test_blockwise_linked_cells_equal_linked_whole_sections(sections, tmp_path):
    predictor, whole = _whole_section_cells("isbi-membranes", sections, link_sections=True)
    out = tmp_path / "linked.ome.zarr"
    predict_to_ome_zarr(["isbi-membranes"], str(sections / "two.zarr"), out, predictor.settings, "fp32", device="cpu", block=256,
                        chunk=128, dtype="float32", progress=False, segment=predictor.segment)
    got = zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...]
    assert _error(whole, got) < 0.005
    shared = set(np.unique(got[0])) & set(np.unique(got[1])) - {0}
    assert len(shared) > 0.5 * len(np.unique(got[1]))  # neighbouring ISBI sections share most cells


@pytest.mark.slow
def test_predict_a_volume_with_segment_writes_its_labels_and_continues(sections, tmp_path, capsys):
    out = tmp_path / "p.ome.zarr"
    args = ["predict", "isbi-membranes", str(sections / "two.zarr"), "-o", str(out), "--segment", "--block", "256",
            "--chunk", "128", "--close-gaps", "0", "--precision", "fp32", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "labels/cells: 2 x 512 x 512 uint32" in printed and "ids unique in the volume" in printed
    first = zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...]
    _, whole = _whole_section_cells("isbi-membranes", sections)
    for z in range(2):  # from the map as written, in steps of 1/255
        assert _error(whole[z], first[z]) < 0.01
    assert main(args) == 0  # a rerun skips every block and writes the same cells
    assert "0 of 8 blocks computed" in capsys.readouterr().out
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...], first)
    assert main(args[:-1] + ["--min-size", "200", "-q"]) == 2  # other settings: refused, nothing lost
    assert "these cells were made by" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels" / "cells" / "0"), mode="r")[...], first)
    with_a_path = [f"--segment={tmp_path / 'c.tif'}" if a == "--segment" else a for a in args]
    assert main(with_a_path) == 2 and "give --segment without a path" in capsys.readouterr().err
    off_the_grid = [{"256": "100", "128": "100"}.get(a, a) for a in args]
    assert main(off_the_grid) == 2 and "--block 100: cells are cut in blocks of a multiple of 8 px" in capsys.readouterr().err


def _voronoi_map(shape=(2, 400, 440), cells=8, seed=0) -> np.ndarray:
    """An interior map of large cells (Voronoi regions of random points, many wider than a
    block), 3-pixel membranes between them, and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    pages = []
    for _ in range(shape[0]):
        points = rng.uniform(0, 1, (cells, 2)) * shape[1:]
        distance = np.sort(np.hypot(yy[None] - points[:, 0, None, None], xx[None] - points[:, 1, None, None]), axis=0)
        interior = np.where(distance[1] - distance[0] > 3, 0.9, 0.1) + rng.normal(0, 0.03, shape[1:])
        pages.append(np.clip(interior, 0, 1).astype(np.float32))
    return np.stack(pages)


@pytest.mark.parametrize("block", [128, 256])
def test_cells_wider_than_blocks_are_one_id_after_stitching(tmp_path, block):
    """The oracle: the seeded watershed of each section whole; the blocks' cuts see the same map."""
    from emunet.config import SegmentConfig
    from emunet.infer.blocks import plan_blocks
    from emunet.infer.segment import seeded_watershed
    from emunet.infer.stitch import CellsPlan, create_scratch, cut_counts, cut_map_block, stitch_cells

    interior = _voronoi_map()
    zarr.open_array(str(tmp_path / "map" / "0"), mode="w", shape=interior.shape, chunks=(1, 64, 64), dtype="float32",
                    zarr_format=2)[...] = interior
    zarr.create_array(str(tmp_path / "labels"), shape=interior.shape, chunks=(1, 64, 64), dtype="uint32", zarr_format=2)
    plan = CellsPlan(str(tmp_path / "scratch"), str(tmp_path / "labels"), interior.shape, block, SegmentConfig(min_size=0), None)
    create_scratch(plan, 64)
    blocks = plan_blocks(interior.shape, block)
    for b in blocks:
        cut_map_block({"cells": plan, "output": str(tmp_path / "map")}, b)
    counts = cut_counts(plan, blocks, 0, None, 1)
    made = stitch_cells(plan, blocks, 0, counts, None, 1, False)
    got = zarr.open_array(str(tmp_path / "labels"), mode="r")[...]
    for z in range(2):
        whole = seeded_watershed(interior[z], 0.5)
        assert len(np.unique(got[z])) == int(whole.max()) and _error(whole, got[z]) < 1e-4
    assert made["cells"] == int(got.max()) == len(np.unique(got))


@pytest.mark.slow
def test_a_volume_too_large_for_the_memory_limit_is_segmented_block_by_block(isbi_dir, tmp_path):
    """Under a 1200 MB limit on the process's data (RLIMIT_DATA), a 4 x 4096 x 4096 volume is
    predicted and segmented block by block (peak data about 870 MB with blocks of 1024 and two
    threads), while the same stack predicted in memory (peak data about 1440 MB) is refused by
    the kernel: the limit bites, and the blockwise path stays under it. Tiles without overlap:
    half the time, the same memory story (with overlap 0.25 the blockwise peak was 950-1000 MB
    and a 1000 MB limit failed one run in four)."""
    import os
    import resource
    import subprocess
    import sys

    import torch

    from emunet.model.checkpoint import save_weights
    from emunet.model.unet import create_model

    torch.manual_seed(0)
    model = create_model("unet_cpu", width=4, depth=2).eval()
    save_weights(tmp_path / "tiny.safetensors", model, model.cfg,
                 {"step": 0, "config": {"intensity": {"low": 0.0, "high": 255.0, "dtype": "uint8", "how": "8-bit"},
                                        "predict": {"tile": 512, "overlap": 0.0, "margin": 16, "close_gaps": 0.0}}})
    page = np.tile(tifffile.imread(isbi_dir / "train-volume.tif")[0], (8, 8))
    volume = np.stack([page, page[::-1], page[:, ::-1], page.T])
    zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=volume.shape, chunks=(1, 1024, 1024), dtype=np.uint8,
                    zarr_format=2)[...] = volume
    tifffile.imwrite(tmp_path / "big.tif", volume, photometric="minisblack")
    limit = 1200 * 2**20
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc's per-thread arenas reserve data space that is never used

    def predict(source: str, output: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emunet", "predict", str(tmp_path / "tiny.safetensors"), source,
                               "-o", output, "--segment", "--precision", "fp32", "-q", *extra], capture_output=True, text=True,
                              env=env, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))

    blockwise = predict(str(tmp_path / "big.zarr"), str(tmp_path / "out.ome.zarr"), "--block", "1024")
    assert blockwise.returncode == 0, blockwise.stderr[-2000:]
    labels = zarr.open_array(str(tmp_path / "out.ome.zarr" / "labels" / "cells" / "0"), mode="r")
    assert labels.shape == volume.shape and labels[3, 4000:, 4000:].max() > 0
    _refused_for_memory(predict(str(tmp_path / "big.tif"), str(tmp_path / "out.tif")), tmp_path / "out.tif")


def _refused_for_memory(in_memory, output) -> None:
    """The stack in memory ran out under the limit: one line that names the way out (numpy's and
    PyTorch's allocators alike), not a traceback, and no output written."""
    err = in_memory.stderr
    assert in_memory.returncode == 2 and err.startswith("unet predict: error: out of memory ("), err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "-o NAME.ome.zarr" in err
    assert not output.exists()


@pytest.mark.slow
def test_an_affinity_models_cells_of_a_section_too_large_for_the_memory_limit(isbi_dir, tmp_path):
    """The affinity head's path (isbi-cells': affinities, the mutex watershed) under the same
    1000 MB data limit: a 1536 x 1536 section cut block by block (blocks of 512; about 850 MB
    resident without the limit), while the same section in memory (about 1.6 GB) is refused."""
    import os
    import resource
    import subprocess
    import sys

    import torch

    from emunet.model.checkpoint import save_weights
    from emunet.model.unet import create_model

    torch.manual_seed(0)
    offsets = [[-1, 0], [0, -1], [-9, 0], [0, -9], [-27, 0], [0, -27]]  # isbi-cells' reach
    model = create_model("unet_cpu", width=4, depth=2, head="affinities", offsets=offsets).eval()
    save_weights(tmp_path / "tiny.safetensors", model, model.cfg,
                 {"step": 0, "config": {"intensity": {"low": 0.0, "high": 255.0, "dtype": "uint8", "how": "8-bit"},
                                        "predict": {"tile": 512, "overlap": 0.25, "margin": 16, "close_gaps": 0.0},
                                        "segment": {"calibrate": False}}})
    section = np.tile(tifffile.imread(isbi_dir / "train-volume.tif")[0], (3, 3))[None]
    zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=section.shape, chunks=(1, 512, 512), dtype=np.uint8,
                    zarr_format=2)[...] = section
    tifffile.imwrite(tmp_path / "big.tif", section, photometric="minisblack")
    limit = 1000 * 2**20
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}

    def predict(source: str, output: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emunet", "predict", str(tmp_path / "tiny.safetensors"), source,
                               "-o", output, "--segment", "--precision", "fp32", "-q", *extra], capture_output=True, text=True,
                              env=env, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (limit, limit)))

    blockwise = predict(str(tmp_path / "big.zarr"), str(tmp_path / "out.ome.zarr"), "--block", "512", "--chunk", "512")
    assert blockwise.returncode == 0, blockwise.stderr[-2000:]
    labels = zarr.open_array(str(tmp_path / "out.ome.zarr" / "labels" / "cells" / "0"), mode="r")
    assert labels.shape == section.shape and labels[0, 1400:, 1400:].max() > 0
    in_memory = predict(str(tmp_path / "big.tif"), str(tmp_path / "out.tif"))
    # the mutex watershed's own allocator (Rust) aborts the process: no error of ours can say it
    assert in_memory.returncode != 0 and "memory" in in_memory.stderr.lower(), in_memory.stderr[-2000:]
