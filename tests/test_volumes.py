"""Volumes larger than memory: formats in and out, blockwise prediction equal to in-memory
prediction, restart after a kill, a distributed run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from emunet.cli import main
from emunet.errors import DataError
from emunet.io.volumes import open_volume
from skimage.metrics import adapted_rand_error


@pytest.fixture(scope="module")
def stack(isbi_dir) -> np.ndarray:
    return tifffile.imread(isbi_dir / "train-volume.tif")[:3, :300, :340]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small untrained network with the CPU preset's shape: its weights are what matters here."""
    import torch

    from emunet.model.checkpoint import save_weights
    from emunet.config import config_to_dict, load_config
    from emunet.model.unet import create_model

    torch.manual_seed(0)
    model = create_model("unet_cpu", width=4, depth=2).eval()
    cfg = load_config(None, ["model.preset=unet_cpu", "model.width=4", "model.depth=2", "predict.tile=128",
                             "predict.overlap=0.25", "predict.margin=16"])
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    intensity = {"low": 0.0, "high": 255.0, "dtype": "uint8", "how": "8-bit"}
    save_weights(path, model, model.cfg, {"step": 0, "config": config_to_dict(cfg) | {"intensity": intensity}})
    return path


def _write_formats(folder: Path, stack: np.ndarray) -> dict[str, str]:
    import h5py
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    paths = {}
    z2 = zarr.open_array(str(folder / "v2.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                         zarr_format=2)
    z2[...] = stack
    paths["zarr v2"] = str(folder / "v2.zarr")
    g3 = zarr.open_group(str(folder / "v3.zarr"), mode="w", zarr_format=3)
    g3.create_array("raw", shape=stack.shape, chunks=(1, 100, 100), dtype=stack.dtype)[...] = stack
    paths["zarr v3 array in a group"] = str(folder / "v3.zarr" / "raw")
    ome = parse_url(str(folder / "v05.ome.zarr"), mode="w").store  # NGFF 0.5 as ome-zarr writes it, with a pyramid
    write_image(stack, zarr.group(store=ome), axes="zyx")
    paths["OME-Zarr 0.5"] = str(folder / "v05.ome.zarr")
    group = zarr.open_group(str(folder / "image.ome.zarr"), mode="w", zarr_format=2)  # NGFF 0.4, calibrated
    group.create_array("0", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype)[...] = stack
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [50.0, 4.0, 4.0]}]}]}]
    paths["OME-Zarr 0.4"] = str(folder / "image.ome.zarr")
    with h5py.File(folder / "data.h5", "w") as f:
        f.create_dataset("volumes/raw", data=stack, chunks=(1, 64, 64))
    paths["HDF5"] = f"{folder / 'data.h5'}:/volumes/raw"
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    paths["TIFF"] = str(folder / "stack.tif")
    return paths


def test_every_format_reads_lazily_as_the_stack_it_holds(stack, tmp_path):
    for kind, path in _write_formats(tmp_path, stack).items():
        volume = open_volume(path)
        assert volume.shape == stack.shape, kind
        assert np.array_equal(volume.raw(1, slice(10, 70), slice(5, 300)), stack[1, 10:70, 5:300]), kind
    ome = open_volume(tmp_path / "image.ome.zarr")
    assert ome.axes == "zyx" and ome.calibration.pixel_size == (4.0, 4.0) and ome.calibration.spacing == 50.0


def test_channels_and_time_need_a_choice_and_axes_must_fit(stack, tmp_path):
    import h5py

    two = np.stack([stack, 255 - stack], axis=0)  # c z y x
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("raw", data=two).attrs["axes"] = "czyx"
    with pytest.raises(DataError, match="has 2 channels.*--channel"):
        open_volume(f"{tmp_path / 'c.h5'}:/raw")
    second = open_volume(f"{tmp_path / 'c.h5'}:/raw", channel=1)
    assert second.shape == stack.shape and np.array_equal(second.raw(0, slice(0, 5), slice(0, 5)), 255 - stack[0, :5, :5])
    with pytest.raises(DataError, match="channel 2 does not exist"):
        open_volume(f"{tmp_path / 'c.h5'}:/raw", channel=2)
    with pytest.raises(DataError, match="axis 't' of length 2"):
        open_volume(f"{tmp_path / 'c.h5'}:/raw", axes="tzyx")
    with pytest.raises(DataError, match="do not match"):
        open_volume(f"{tmp_path / 'c.h5'}:/raw", axes="zyx")
    with pytest.raises(DataError, match="name the dataset"):
        with h5py.File(tmp_path / "two.h5", "w") as f:
            f["a"], f["b"] = stack, stack
        open_volume(tmp_path / "two.h5")


@pytest.mark.slow
def test_blockwise_prediction_equals_whole_sections_at_block_edges_too(tiny_model, isbi_dir, tmp_path):
    from emunet.infer.blockwise import predict_to_ome_zarr
    from emunet.config import PredictConfig
    from emunet.io.data import read_images
    from emunet.infer.predict import load_models, predict_volume

    tiles = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    big = np.tile(tiles, (1, 3, 3))[:, :1100, :1090]  # 2 x 1100 x 1090: more than one closing window
    tifffile.imwrite(tmp_path / "big.tif", big)
    zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=big.shape, chunks=(1, 256, 256), dtype=big.dtype,
                    zarr_format=2)[...] = big
    loaded = load_models([tiny_model], "cpu")
    whole = read_images(tmp_path / "big.tif", intensity=loaded.intensity)
    for pcfg, block, chunk in ((PredictConfig(tile=128, overlap=0.25, margin=16, smooth=1.0), 256, 128),
                               (PredictConfig(tile=128, overlap=0.25, margin=16, smooth=1.0, close_gaps=0.5), 1024, 512)):
        expected = predict_volume(loaded.models, whole, pcfg, "fp32")
        out = tmp_path / f"out-{block}.ome.zarr"
        result = predict_to_ome_zarr([tiny_model], str(tmp_path / "big.zarr"), out, pcfg, "fp32", device="cpu",
                                     block=block, chunk=chunk, dtype="float32", progress=False)
        assert result.blocks == 2 * (-(-1100 // block)) * (-(-1090 // block))
        got = zarr.open_array(str(out / "0"), mode="r")[...]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        edge = slice(block - 3, block + 3)  # the seams between blocks
        np.testing.assert_allclose(got[:, edge], expected[:, edge], rtol=0, atol=1e-6)


def test_a_valid_padded_network_predicts_blockwise_as_it_predicts_whole_sections(stack, tmp_path):
    """The lab's kind of network (valid convolutions, no margin): tiles need context beyond the
    block, read from its neighbours."""
    import torch

    from emunet.infer.blockwise import Block, predict_block
    from emunet.config import PredictConfig
    from emunet.model.unet import create_model
    from emunet.io.pixels import Intensity
    from emunet.infer.tiling import predict_image

    torch.manual_seed(0)
    model = create_model("unet_medical", width=4, depth=2).eval()
    zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 64, 64), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    volume = open_volume(tmp_path / "in.zarr")
    volume.intensity = Intensity(0.0, 255.0, "uint8", "8-bit")
    pcfg = PredictConfig(tile=100, overlap=0.0)
    whole = predict_image(model, stack[1].astype(np.float32) / np.float32(255), tile=100, overlap=0.0, precision="fp32")
    for y0, x0 in ((0, 0), (96, 160), (192, 288)):
        block = Block(1, y0, min(y0 + 96, 300), x0, min(x0 + 160, 340))
        got = predict_block([model], volume, block, pcfg, "fp32")
        np.testing.assert_allclose(got, whole[block.y0 : block.y1, block.x0 : block.x1], rtol=0, atol=1e-6)
    # test-time turns too: each transform is predicted on the whole turned section's tile grid
    from dataclasses import replace

    from emunet.infer.tta import predict_image_tta

    whole = predict_image_tta(model, stack[1].astype(np.float32) / np.float32(255), tile=100, overlap=0.0, precision="fp32")
    block = Block(1, 96, 192, 160, 320)
    got = predict_block([model], volume, block, replace(pcfg, tta=True), "fp32")
    np.testing.assert_allclose(got, whole[96:192, 160:320], rtol=0, atol=1e-6)


def test_ome_zarr_output_reads_back_with_its_metadata_and_a_pyramid(tiny_model, stack, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    tifffile.imwrite(tmp_path / "in.tif", stack, imagej=True, resolution=(1 / 4.0, 1 / 4.0),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 50.0})
    out = tmp_path / "pred.ome.zarr"
    assert main(["predict", str(tiny_model), str(tmp_path / "in.tif"), "-o", str(out), "--block", "128", "--chunk", "64",
                 "--levels", "2", "--close-gaps", "0", "-q"]) == 0
    assert f"wrote {out}: 3 x 300 x 340 uint8" in capsys.readouterr().out
    node = next(iter(Reader(parse_url(str(out)))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"] and node.metadata["axes"][1]["unit"] == "nanometer"
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[50.0, 4.0, 4.0], [50.0, 8.0, 8.0]]
    full, half = (np.asarray(level) for level in node.data)
    assert full.shape == (3, 300, 340) and half.shape == (3, 150, 170) and full.dtype == np.uint8
    assert zarr.open_array(str(out / "0"), mode="r").chunks == (1, 64, 64)
    assert abs(float(half[1].mean()) - float(full[1].mean())) < 1.0


@pytest.mark.slow
def test_a_killed_prediction_rerun_continues_and_ends_as_an_undisturbed_one(tiny_model, stack, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", np.concatenate([stack] * 2), photometric="minisblack")  # 6 sections
    command = [sys.executable, "-m", "emunet", "predict", str(tiny_model), str(tmp_path / "in.tif"), "--block", "64",
               "--chunk", "64", "--close-gaps", "0", "--precision", "fp32", "-q", "-o"]
    undisturbed = tmp_path / "whole.ome.zarr"
    subprocess.run([*command, str(undisturbed)], check=True)
    killed = tmp_path / "killed.ome.zarr"
    run = subprocess.Popen([*command, str(killed)])
    done = tmp_path / ".killed.ome.zarr.blocks"
    deadline = time.monotonic() + 120
    while not (done.is_dir() and len(list(done.iterdir())) >= 20):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    run.kill()  # kill -9, anywhere in a block
    run.wait()
    finished = len([p for p in done.iterdir() if not p.name.startswith(".")])  # not a marker cut off mid-write
    assert finished < 6 * 6 * 5
    out = subprocess.run([*command[:-2], "-o", str(killed)], capture_output=True, text=True, check=True).stdout
    assert f"({finished} finished before)" in out
    a = zarr.open_array(str(undisturbed / "0"), mode="r")[...]
    b = zarr.open_array(str(killed / "0"), mode="r")[...]
    assert np.array_equal(a, b)
    import shutil

    shutil.rmtree(killed)  # the output removed: the markers beside it no longer count
    subprocess.run([*command[:-2], "-o", str(killed)], check=True)
    assert np.array_equal(a, zarr.open_array(str(killed / "0"), mode="r")[...])


@pytest.mark.slow
def test_a_distributed_run_on_two_worker_processes_gives_the_same_output(tiny_model, stack, tmp_path):
    from distributed import LocalCluster

    from emunet.infer.blockwise import predict_to_ome_zarr
    from emunet.config import PredictConfig

    zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    pcfg = PredictConfig(tile=128, overlap=0.25, margin=16, smooth=1.0)
    local = predict_to_ome_zarr([tiny_model], str(tmp_path / "in.zarr"), tmp_path / "local.ome.zarr", pcfg, "fp32",
                                device="cpu", block=128, chunk=128, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        spread = predict_to_ome_zarr([tiny_model], str(tmp_path / "in.zarr"), tmp_path / "spread.ome.zarr", pcfg, "fp32",
                                     device="cpu", block=128, chunk=128, scheduler=cluster.scheduler_address,
                                     progress=False)
    assert spread.blocks == local.blocks == 3 * 3 * 3
    a = zarr.open_array(str(tmp_path / "local.ome.zarr" / "0"), mode="r")[...]
    b = zarr.open_array(str(tmp_path / "spread.ome.zarr" / "0"), mode="r")[...]
    assert np.array_equal(a, b)


def test_volumes_are_accepted_where_images_are(tiny_model, stack, tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["raw"] = stack
    assert main(["predict", str(tiny_model), f"{tmp_path / 'd.h5'}:/raw", "-o", str(tmp_path / "p.tif"), "-q"]) == 0
    assert tifffile.imread(tmp_path / "p.tif").shape == stack.shape


def test_predict_writes_an_hdf5_dataset_that_reads_back_as_a_volume(tiny_model, stack, tmp_path, capsys):
    import h5py

    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    assert main(["predict", str(tiny_model), str(tmp_path / "in.tif"), "-o", f"{tmp_path / 'out.h5'}:/pred/prob", "-q"]) == 0
    assert f"{tmp_path / 'out.h5'}:/pred/prob: 3 x 300 x 340 float32" in capsys.readouterr().out
    assert main(["predict", str(tiny_model), str(tmp_path / "in.tif"), "-o", str(tmp_path / "p.tif"), "-q"]) == 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["pred/prob"].attrs["axes"] == "zyx"
        assert np.array_equal(f["pred/prob"][...], tifffile.imread(tmp_path / "p.tif"))
    assert open_volume(f"{tmp_path / 'out.h5'}:/pred/prob").shape == stack.shape


def test_training_on_a_zarr_volume_reads_tiles_from_disk_and_trains_as_on_the_stack_in_memory(isbi_dir, tmp_path,
                                                                                            monkeypatch):
    import csv

    import emunet.train.sampling

    from emunet.train.loop import train
    from test_train import _cfg

    images = tifffile.imread(isbi_dir / "train-volume.tif")[:10, :256, :256]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:10, :256, :256]
    tifffile.imwrite(tmp_path / "i.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", labels, photometric="minisblack")
    for name, data in (("i.zarr", images), ("l.zarr", labels)):
        zarr.open_array(str(tmp_path / name), mode="w", shape=data.shape, chunks=(1, 64, 64), dtype=data.dtype,
                        zarr_format=2)[...] = data
    extra = ["train.steps=4", "train.val_every=2", "augment.elastic_std=5"]
    paths = {"images": tmp_path / "i.tif", "labels": tmp_path / "l.tif", "test": tmp_path / "i.tif"}
    in_memory = train(_cfg(paths, tmp_path / "mem", *extra), progress=False)
    lazy_paths = {"images": tmp_path / "i.zarr", "labels": tmp_path / "l.zarr", "test": tmp_path / "i.tif"}
    drawn = []
    real = emunet.train.sampling.TileSampler.sample
    monkeypatch.setattr(emunet.train.sampling.TileSampler, "sample", lambda self, n: drawn.append((n, type(self.source).__name__)) or real(self, n))
    lazy = train(_cfg(lazy_paths, tmp_path / "lazy", *extra), progress=False)

    def losses(run):
        with open(run / "metrics.csv") as f:
            return [r["loss"] for r in csv.DictReader(f)]

    assert drawn == [(2, "LazyLabelled")] * 4  # every batch cut from the Zarr arrays, not from a copy in memory
    assert losses(tmp_path / "mem") == losses(tmp_path / "lazy")
    assert lazy.report.mean == in_memory.report.mean


def test_outputs_never_write_over_their_input_or_a_folder_they_did_not_make(tiny_model, stack, tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["raw"] = stack
    assert main(["predict", str(tiny_model), f"{tmp_path / 'd.h5'}:/raw", "-o", f"{tmp_path / 'd.h5'}:/prob", "-q"]) == 2
    assert "the output is the input" in capsys.readouterr().err
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert np.array_equal(f["raw"][...], stack)
    _write_formats(tmp_path, stack)
    assert main(["predict", str(tiny_model), str(tmp_path / "image.ome.zarr"), "-o", str(tmp_path / "image.ome.zarr"),
                 "-q"]) == 2
    assert "would write into the input" in capsys.readouterr().err
    assert np.array_equal(open_volume(tmp_path / "image.ome.zarr").raw(0, slice(0, 300), slice(0, 340)), stack[0])
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "keep.txt").write_text("mine")
    assert main(["predict", str(tiny_model), str(tmp_path / "v2.zarr"), "-o", str(tmp_path / "mine.zarr"), "-q"]) == 2
    assert "is not an OME-Zarr image this command wrote" in capsys.readouterr().err
    assert (tmp_path / "mine.zarr" / "keep.txt").read_text() == "mine"


def test_a_2_5d_model_reads_the_same_neighbours_blockwise_as_in_memory(stack, tmp_path):
    """Context 2 at the first and last sections: both ways mirror the stack at its ends (section
    -2 is section 1), so the blocks equal the sections predicted whole."""
    import torch

    from emunet.config import PredictConfig
    from emunet.infer.blockwise import Block, predict_block
    from emunet.infer.predict import predict_volume
    from emunet.io.data import Volume
    from emunet.io.pixels import Intensity
    from emunet.model.unet import create_model

    torch.manual_seed(0)
    model = create_model("unet_cpu", width=4, depth=2, in_channels=5).eval()
    zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 64, 64), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    volume = open_volume(tmp_path / "in.zarr")
    volume.intensity = Intensity(0.0, 255.0, "uint8", "8-bit")
    scaled = stack.astype(np.float32) / np.float32(255)
    pcfg = PredictConfig(tile=128, overlap=0.25, margin=16, smooth=0.0, close_gaps=0.0)
    whole = predict_volume([model], Volume(scaled, [f"s{i}" for i in range(len(stack))], tmp_path), pcfg, "fp32")
    for z in (0, 1, 2):
        got = predict_block([model], volume, Block(z, 0, 300, 0, 340), pcfg, "fp32")
        np.testing.assert_allclose(got, whole[z], rtol=0, atol=1e-6, err_msg=f"section {z}")


@pytest.mark.parametrize("layout", ["interleaved", "planar", "rgba", "channels"])
def test_a_colour_or_channel_tiff_reads_alike_whole_and_lazily(layout, tmp_path, caplog):
    """One rule for TIFF axes in both readers: RGB(A) becomes grey by ITU-R 601 luma (computed
    here by hand), in interleaved and planar files alike; channels without sections become
    sections. So ``-o x.tif`` and ``-o x.ome.zarr`` predict the same sections of one file."""
    from emunet.io.data import read_images

    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 4 if layout == "rgba" else 3), dtype=np.uint8)
    path = tmp_path / f"{layout}.tif"
    if layout == "channels":
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), imagej=True, metadata={"axes": "CYX"})
        expected = np.moveaxis(rgb, -1, 0)
    else:
        data = np.moveaxis(rgb, -1, 0) if layout == "planar" else rgb
        tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate" if layout == "planar" else "contig",
                         extrasamples=["unassalpha"] if layout == "rgba" else None)
        luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        expected = np.round(luma).astype(np.uint8)[None]
    whole = read_images(path)
    volume = open_volume(path)
    lazy = np.stack([volume.raw(z, slice(0, 40), slice(0, 48)) for z in range(volume.shape[0])])
    assert volume.shape == expected.shape and np.array_equal(lazy, expected)
    assert np.allclose(whole.images, expected / 255.0, atol=1e-6)
    assert ("reduced to grey" if layout != "channels" else "as sections") in caplog.text


def test_a_2_5d_model_sees_the_same_neighbours_blockwise_as_in_memory(tmp_path):
    """data.context=2: the first and last sections' missing neighbours are the stack mirrored at
    its ends (section -2 is section 1, -1 is 0), blockwise as in memory; the oracle is the tiling
    given those five sections by hand."""
    import torch

    from emunet.config import PredictConfig
    from emunet.infer.blockwise import predict_to_ome_zarr
    from emunet.infer.predict import predict_volume
    from emunet.infer.tiling import predict_image
    from emunet.io.data import Volume
    from emunet.model.checkpoint import save_weights
    from emunet.model.unet import create_model

    torch.manual_seed(0)
    model = create_model("unet_cpu", width=4, depth=2, in_channels=5).eval()
    path = tmp_path / "ctx2.safetensors"
    save_weights(path, model, model.cfg, {"step": 0, "config": {"intensity": {"low": 0.0, "high": 255.0, "dtype": "uint8",
                                                                               "how": "8-bit"}}})
    raw = np.random.default_rng(1).integers(0, 256, (4, 96, 96), dtype=np.uint8)  # every section different
    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=raw.shape, chunks=(1, 32, 32), dtype=raw.dtype,
                    zarr_format=2)[...] = raw
    pcfg = PredictConfig(tile=64, overlap=0.25, margin=16, smooth=0.0, close_gaps=0.0)
    grey = raw.astype(np.float32) / 255
    in_memory = predict_volume([model], Volume(grey, [f"s{i}" for i in range(4)], tmp_path / "v.tif"), pcfg, "fp32")
    predict_to_ome_zarr([path], str(tmp_path / "v.zarr"), tmp_path / "out.ome.zarr", pcfg, "fp32", device="cpu", block=64,
                        chunk=32, dtype="float32", progress=False)
    blockwise = zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"), mode="r")[...]
    np.testing.assert_allclose(blockwise, in_memory, rtol=0, atol=1e-6)
    settings = pcfg.tiling("fp32")
    first = predict_image(model, [grey[j] for j in (1, 0, 0, 1, 2)], **settings)
    last = predict_image(model, [grey[j] for j in (1, 2, 3, 3, 2)], **settings)
    np.testing.assert_allclose(in_memory[0], first, rtol=0, atol=1e-6)
    np.testing.assert_allclose(in_memory[3], last, rtol=0, atol=1e-6)


def test_threads_sharing_one_model_give_the_output_of_one_thread(isbi_dir, tmp_path):
    """--workers 4 with --segment: the blocks' threads share the model the command loaded first
    (its weights rewritten by one thread while another predicted with them crashed the process
    at once); map and cells are one thread's."""
    import subprocess

    stack = tifffile.imread(isbi_dir / "train-volume.tif")[:2, :256, :256]
    zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    outputs = []
    for workers in ("4", "1"):
        out = tmp_path / f"w{workers}.ome.zarr"
        run = subprocess.run([sys.executable, "-m", "emunet", "predict", "isbi-cells", str(tmp_path / "in.zarr"), "-o",
                              str(out), "--block", "128", "--chunk", "128", "--close-gaps", "0", "--precision", "fp32",
                              "--dtype", "float32", "--workers", workers, "--segment", "-q"], capture_output=True, text=True)
        assert run.returncode == 0, (workers, run.returncode, run.stderr[-2000:])
        outputs.append([zarr.open_array(str(out / a), mode="r")[...] for a in ("0", "labels/cells/0")])
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    assert adapted_rand_error(outputs[1][1].astype(np.uint64), outputs[0][1].astype(np.uint64))[0] < 0.005


def test_adapt_norm_block_by_block_predicts_what_it_predicts_in_memory(tiny_model, stack, tmp_path):
    # One adaptation for the whole volume, estimated from the same windows as the stack in
    # memory, stored in the output: blocks agree with the in-memory map, and differ from the
    # map of the model's own statistics.
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    for flag, out in (("--no-adapt-norm", "kept.tif"), ("--adapt-norm", "adapted.tif")):
        assert main(["predict", str(tiny_model), str(tmp_path / "s.tif"), "-o", str(tmp_path / out), flag, "-q",
                     "--precision", "fp32"]) == 0
    kept, adapted = tifffile.imread(tmp_path / "kept.tif"), tifffile.imread(tmp_path / "adapted.tif")
    assert np.abs(kept - adapted).max() > 0.02
    _write_formats(tmp_path, stack)
    out = tmp_path / "p.ome.zarr"
    assert main(["predict", str(tiny_model), str(tmp_path / "v2.zarr"), "-o", str(out), "--adapt-norm", "--block", "256",
                 "--chunk", "128", "--dtype", "float32", "--precision", "fp32", "-q"]) == 0
    blockwise = zarr.open_array(str(out / "0"), mode="r")[...]
    np.testing.assert_allclose(blockwise, adapted, atol=1e-4)
    assert (out / "adapted-norm.safetensors").is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_task_threads_predict_on_their_share_of_the_cores(tiny_model, stack, tmp_path, monkeypatch, workers):
    """Blocks predicted by two threads: each pass runs with PyTorch's threads set to that
    thread's share of the cores; by one: in the calling thread, on all of them. PyTorch's thread
    count is the caller's again afterwards."""
    import threading

    import torch

    from emunet.config import PredictConfig
    from emunet.device import usable_cores
    from emunet.infer import kernel
    from emunet.infer.blockwise import predict_to_ome_zarr

    zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128), dtype=stack.dtype,
                    zarr_format=2)[...] = stack
    seen, network = set(), kernel.predict_section_region

    def recorded(*args, **kwargs):
        seen.add((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return network(*args, **kwargs)

    monkeypatch.setattr(kernel, "predict_section_region", recorded)
    before = torch.get_num_threads()
    pcfg = PredictConfig(tile=128, overlap=0.25, margin=16)
    done = predict_to_ome_zarr([str(tiny_model)], str(tmp_path / "in.zarr"), tmp_path / "out.ome.zarr", pcfg, "fp32",
                               block=128, chunk=128, dtype="float32", workers=workers, progress=False)
    assert done.blocks == 3 * 3 * 3 and torch.get_num_threads() == before
    assert seen == ({(True, usable_cores())} if workers == 1 else {(False, max(1, usable_cores() // 2))})
