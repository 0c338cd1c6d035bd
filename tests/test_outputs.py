"""Outputs that never silently reuse, replace or collide: each format named by its suffix (or
refused), HDF5 datasets added beside the file's others, folder outputs with names that never
collide, and blockwise outputs that continue only what the same model, input and settings made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from emunet.cli import main


@pytest.fixture(scope="module")
def stack(isbi_dir) -> np.ndarray:
    return tifffile.imread(isbi_dir / "train-volume.tif")[:2, :160, :192]


def _model(folder: Path, seed: int) -> Path:
    import torch

    from emunet.config import config_to_dict, load_config
    from emunet.model.checkpoint import save_weights
    from emunet.model.unet import create_model

    torch.manual_seed(seed)
    model = create_model("unet_cpu", width=4, depth=2).eval()
    cfg = load_config(None, ["model.preset=unet_cpu", "model.width=4", "model.depth=2", "predict.tile=128",
                             "predict.overlap=0.25", "predict.margin=16", "predict.close_gaps=0"])
    path = folder / f"tiny{seed}.safetensors"
    intensity = {"low": 0.0, "high": 255.0, "dtype": "uint8", "how": "8-bit"}
    save_weights(path, model, model.cfg, {"step": 0, "config": config_to_dict(cfg) | {"intensity": intensity}})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    return _model(folder, 0), _model(folder, 1)


@pytest.fixture
def image(stack, tmp_path) -> Path:
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    return tmp_path / "in.tif"


BLOCKS = ["--block", "64", "--chunk", "64", "--precision", "fp32", "-q"]


def test_a_blockwise_rerun_by_another_model_or_input_is_refused_unless_overwritten(models, image, stack, tmp_path, capsys):
    m1, m2 = models
    out = tmp_path / "out.ome.zarr"
    assert main(["predict", str(m1), str(image), "-o", str(out), *BLOCKS]) == 0
    by_m1 = zarr.open_array(str(out / "0"), mode="r")[...]
    assert main(["predict", str(m2), str(image), "-o", str(out), *BLOCKS]) == 2
    err = capsys.readouterr().err
    assert "made by other checkpoints" in err and "--overwrite" in err
    assert np.array_equal(zarr.open_array(str(out / "0"), mode="r")[...], by_m1)  # M1's maps untouched
    other = tmp_path / "other.tif"  # same shape, other pixels, other path
    tifffile.imwrite(other, stack[::-1].copy(), photometric="minisblack")
    assert main(["predict", str(m1), str(other), "-o", str(out), *BLOCKS]) == 2
    assert "another input" in capsys.readouterr().err
    tifffile.imwrite(image, 255 - stack, photometric="minisblack")  # same path, same shape, other pixels
    assert main(["predict", str(m1), str(image), "-o", str(out), *BLOCKS]) == 2
    assert "its shape or pixels differ" in capsys.readouterr().err
    tifffile.imwrite(image, stack, photometric="minisblack")
    assert main(["predict", str(m1), str(image), "-o", str(out), "--dtype", "float16", *BLOCKS]) == 2
    assert "other settings (dtype)" in capsys.readouterr().err
    assert main(["predict", str(m2), str(image), "-o", str(out), "--overwrite", *BLOCKS]) == 0
    fresh = tmp_path / "fresh.ome.zarr"
    assert main(["predict", str(m2), str(image), "-o", str(fresh), *BLOCKS]) == 0
    assert np.array_equal(zarr.open_array(str(out / "0"), mode="r")[...], zarr.open_array(str(fresh / "0"), mode="r")[...])
    assert not np.array_equal(by_m1, zarr.open_array(str(fresh / "0"), mode="r")[...])


def test_a_finished_block_whose_chunk_is_gone_is_predicted_again(models, image, tmp_path, capsys):
    out = tmp_path / "out.ome.zarr"
    assert main(["predict", str(models[0]), str(image), "-o", str(out), *BLOCKS]) == 0
    whole = zarr.open_array(str(out / "0"), mode="r")[...]
    blocks = 2 * 3 * 3
    capsys.readouterr()
    (out / "0" / "1.2.1").unlink()
    assert main(["predict", str(models[0]), str(image), "-o", str(out), "--block", "64", "--chunk", "64",
                 "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert f"1 of {blocks} blocks computed ({blocks - 1} finished before)" in printed
    assert np.array_equal(zarr.open_array(str(out / "0"), mode="r")[...], whole)
    assert main(["predict", str(models[0]), str(image), "-o", str(out), "--block", "64", "--chunk", "64",
                 "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert f"0 of {blocks} blocks computed ({blocks} finished before)" in printed and "MP/s" not in printed


def test_an_hdf5_output_is_added_beside_the_files_other_datasets(models, image, stack, tmp_path, capsys):
    import h5py

    target = tmp_path / "other.h5"
    with h5py.File(target, "w") as f:
        f["keep/me"] = np.arange(5)
    assert main(["predict", str(models[0]), str(image), "-o", f"{target}:/prob", "-q"]) == 0
    with h5py.File(target, "r") as f:
        assert np.array_equal(f["keep/me"][...], np.arange(5)) and f["prob"].shape == stack.shape
        first = f["prob"][...]
    assert main(["predict", str(models[1]), str(image), "-o", f"{target}:/prob", "-q"]) == 2
    assert "already holds this dataset" in capsys.readouterr().err
    with h5py.File(target, "r") as f:
        assert np.array_equal(f["prob"][...], first)
    assert main(["predict", str(models[1]), str(image), "-o", f"{target}:/prob", "--overwrite", "-q"]) == 0
    with h5py.File(target, "r") as f:
        assert not np.array_equal(f["prob"][...], first) and "keep/me" in f


def test_images_sharing_a_stem_in_a_folder_get_outputs_of_their_own(models, stack, tmp_path, capsys):
    from PIL import Image

    coll = tmp_path / "coll"
    coll.mkdir()
    Image.fromarray(stack[0]).save(coll / "a.png")
    tifffile.imwrite(coll / "a.tif", stack[1])
    assert main(["predict", str(models[0]), str(coll), "-o", str(tmp_path / "outdir"), "--masks", str(tmp_path / "m"),
                 "-q"]) == 0
    written = sorted(p.name for p in (tmp_path / "outdir").iterdir())
    assert written == ["a_png.tif", "a_tif.tif"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["a_png_mask.png", "a_tif_mask.png"]
    a_png, a_tif = (tifffile.imread(tmp_path / "outdir" / n) for n in written)
    assert not np.array_equal(a_png, a_tif)
    # one folder for two kinds of output with the same file names is refused before anything runs
    assert main(["predict", str(models[0]), str(coll), "-o", str(tmp_path / "same"), "--segment", str(tmp_path / "same"),
                 "-q"]) == 2
    assert "--segment would be written over the -o output" in capsys.readouterr().err
    assert not (tmp_path / "same").exists()


@pytest.mark.parametrize("name", ["p.hdf5", "p.hdf", "q.hdf5:/ds", "out/q.H5"])
def test_an_hdf5_suffix_in_any_spelling_writes_hdf5(models, image, stack, tmp_path, name):
    import h5py

    assert main(["predict", str(models[0]), str(image), "-o", str(tmp_path / name), "-q"]) == 0
    file_name, _, dataset = name.partition(":")
    with h5py.File(tmp_path / file_name, "r") as f:
        assert f[dataset or "probabilities"].shape == stack.shape


@pytest.mark.parametrize("name", ["p.png", "p.npy", "p.jpg"])
def test_an_output_suffix_that_names_no_output_format_is_refused(models, image, tmp_path, capsys, name):
    assert main(["predict", str(models[0]), str(image), "-o", str(tmp_path / name), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is not a format this -o output can take" in err and "HDF5 (.h5, .hdf5 or .hdf" in err
    assert not (tmp_path / name).exists()


def test_cells_go_where_their_suffix_says(models, image, stack, tmp_path):
    import h5py

    assert main(["predict", str(models[0]), str(image), "-o", str(tmp_path / "p.tif"), "--segment",
                 str(tmp_path / "cells.h5"), "-q"]) == 0
    with h5py.File(tmp_path / "cells.h5", "r") as f:
        assert f["cells"].dtype == np.uint32 and f["cells"].shape == stack.shape
    assert main(["predict", str(models[0]), str(image), "-o", str(tmp_path / "both.h5"), "--segment", "-q"]) == 0
    with h5py.File(tmp_path / "both.h5", "r") as f:  # by default the cells go beside the map in its file
        assert set(f) == {"probabilities", "cells"}


def test_the_cells_tiff_carries_imagej_metadata(models, stack, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", stack, imagej=True, resolution=(1 / 4.0, 1 / 4.0),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 50.0})
    assert main(["predict", str(models[0]), str(tmp_path / "in.tif"), "-o", str(tmp_path / "p.tif"), "--segment", "-q"]) == 0
    with tifffile.TiffFile(tmp_path / "p-cells.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["spacing"] == 50.0
        assert tif.series[0].axes == "ZYX" and tif.series[0].dtype == np.uint32
        assert tif.pages[0].resolution == pytest.approx((0.25, 0.25))


def test_blockwise_options_with_another_output_are_refused(models, image, tmp_path, capsys):
    for option in (["--dtype", "float16"], ["--levels", "2"], ["--block", "64"]):
        assert main(["predict", str(models[0]), str(image), "-o", str(tmp_path / "p.tif"), *option, "-q"]) == 2
        assert f"{option[0]}: for an OME-Zarr output only" in capsys.readouterr().err
    assert not (tmp_path / "p.tif").exists()


def test_one_slice_is_one_slice_and_a_failed_start_leaves_no_folder(models, stack, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "one.tif", stack[0])
    assert main(["predict", str(models[0]), str(tmp_path / "one.tif"), "-o", str(tmp_path / "p.tif")]) == 0
    assert "predicted 1 slice in" in capsys.readouterr().out
    missing = tmp_path / "missing.tif"
    assert main(["predict", str(models[0]), str(missing), "-o", str(tmp_path / "new" / "deeper" / "p.tif"),
                 "--masks", str(tmp_path / "new" / "masks"), "-q"]) == 2
    assert "missing.tif" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_ome_zarr_unit_is_ngffs_name(models, stack, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", stack, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.05})
    out = tmp_path / "p.ome.zarr"
    assert main(["predict", str(models[0]), str(tmp_path / "in.tif"), "-o", str(out), *BLOCKS]) == 0
    axes = json.loads((out / ".zattrs").read_text())["multiscales"][0]["axes"]
    assert [a["unit"] for a in axes] == ["micrometer"] * 3


def test_evaluate_never_writes_over_a_runs_own_record(tiny_run, small_isbi, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    record = (out / "eval.json").read_bytes()
    assert main(["evaluate", str(out / "best.safetensors"), "--images", str(small_isbi["images"]), "--labels",
                 str(small_isbi["labels"]), "--precision", "fp32", "-q"]) == 0
    assert f"wrote {out / 'evaluate.json'}" in capsys.readouterr().out
    assert (out / "eval.json").read_bytes() == record
    scored = json.loads((out / "evaluate.json").read_text())
    assert scored["data"].startswith("all of") and len(scored["slices"]) == 10
    assert main(["evaluate", str(out / "best.safetensors"), "--json", str(out / "eval.json"), "-q"]) == 2
    assert "the run's own record" in capsys.readouterr().err
    assert (out / "eval.json").read_bytes() == record


@pytest.mark.parametrize("shape", [(256, 1), (1, 256), (2, 96, 3), (2, 4, 96)])
def test_thin_images_come_back_in_their_own_shape(models, tmp_path, shape):
    """A last side of 1, 3 or 4 pixels is not taken for colour samples on the way out."""
    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="minisblack")
    assert main(["predict", str(models[0]), str(tmp_path / "in.tif"), "-o", str(tmp_path / "p.tif"), "--segment", "-q"]) == 0
    assert tifffile.imread(tmp_path / "p.tif").shape == shape
    assert tifffile.imread(tmp_path / "p-cells.tif").shape == shape
