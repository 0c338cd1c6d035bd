"""One writer per format, each taking an :class:`Address` and writing whole or not at all:
probability and cell stacks as TIFF (ImageJ metadata), as a dataset added into an HDF5 file
(the file's other datasets kept), or as an OME-Zarr image or label image; PNG masks and
overlays into folders. :func:`check_outputs` is the one guard every command calls before it
computes anything."""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..errors import DataError, UsageError
from .address import Address
from .data import Volume
from .files import atomic_update, atomic_write, atomic_write_bytes, check_writable

__all__ = ["check_outputs", "write_probabilities", "write_cells", "write_masks", "write_overlays", "check_folder"]

PROBABILITIES_DATASET = "probabilities"
CELLS_DATASET = "cells"
# What each option writes into a folder, per image: outputs may share a folder when these differ.
FOLDER_FILES = MappingProxyType({"-o": "{name}.tif", "--segment": "{name}.tif", "--masks": "{name}_mask.png", "--overlays": "{name}_overlay.png"})


def _ijmetadata(volume: Volume | None) -> tuple[dict, tuple[float, float] | None]:
    """ImageJ's description fields and the TIFF resolution of ``volume``'s calibration."""
    metadata: dict = {}
    resolution = None
    if volume is not None and volume.calibration is not None:
        cal = volume.calibration
        resolution = (1.0 / cal.pixel_size[0], 1.0 / cal.pixel_size[1])
        metadata["unit"] = cal.unit
        if cal.spacing:
            metadata["spacing"] = cal.spacing
    return metadata, resolution


def _write_tiff(path: Path, data: np.ndarray, volume: Volume | None) -> None:
    """An ImageJ hyperstack (axes ZYX) with the input's pixel size, spacing, unit and slice labels.
    ImageJ's own writer takes 8/16-bit and float32; uint32 cells get the same description by hand
    (Fiji opens them as a 32-bit stack with the right scale)."""
    import tifffile

    metadata, resolution = _ijmetadata(volume)
    if data.dtype == np.uint32:
        description = tifffile.imagej_description(data.shape, "ZYX", **metadata)
        atomic_write(path, lambda f: tifffile.imwrite(f, data, description=description, metadata=None, resolution=resolution,
                                                      photometric="minisblack", compression="zlib"))
        return
    if volume is not None:
        metadata["Labels"] = list(volume.names)
    # All six ImageJ axes spelled out: given ZYX, tifffile takes a last axis of 1, 3 or 4 for
    # samples per pixel, and a 256 x 1 image would read back 1 x 256.
    metadata["axes"] = "TZCYXS"
    hyperstack = data[None, :, None, :, :, None]
    atomic_write(path, lambda f: tifffile.imwrite(f, hyperstack, imagej=True, resolution=resolution, metadata=metadata))


def _write_hdf5(address: Address, data: np.ndarray, volume: Volume | None, overwrite: bool) -> None:
    """``data`` as the dataset ``address.member`` (axes zyx, chunked per section, gzip) added into the
    HDF5 file, whose other datasets stay; an existing dataset of that name only with ``overwrite``.
    The file is changed on a copy renamed over it: a crash leaves the old file."""
    import h5py

    def add(path: Path) -> None:
        with h5py.File(path, "a") as h5:
            if address.member in h5:
                if not overwrite:
                    raise UsageError(f"{address}: the file already holds this dataset; choose another dataset "
                                     "(FILE.h5:/name) or replace it with --overwrite")
                del h5[address.member]
            ds = h5.create_dataset(address.member, data=data, compression="gzip", chunks=(1, *data.shape[1:]))
            ds.attrs["axes"] = "zyx"
            if volume is not None and volume.calibration is not None:
                cal = volume.calibration
                ds.attrs["resolution"] = [cal.spacing or 1.0, cal.pixel_size[1], cal.pixel_size[0]]
                ds.attrs["unit"] = cal.unit

    atomic_update(address.path, add)


def _write_zarr_labels(path: Path, cells: np.ndarray, volume: Volume | None) -> None:
    """An OME-Zarr label image (NGFF 0.4, ``image-label``) written beside and renamed into place."""
    from .places import Place
    from .volumes import create_ome_zarr

    if path.exists():
        raise DataError(f"{path}: exists; choose another path for the cells or remove it")
    staging = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    chunks = (1, min(1024, cells.shape[1]), min(1024, cells.shape[2]))
    calibration = volume.calibration if volume is not None else None
    group = create_ome_zarr(Place(staging), cells.shape, chunks, "uint32", calibration, name=path.name)
    group["0"][...] = cells
    group.attrs["image-label"] = {"version": "0.4"}
    staging.rename(path)


def write_probabilities(address: Address, probs: np.ndarray, volume: Volume | None = None, overwrite: bool = False) -> str:
    """Float32 probabilities (N, H, W) to a TIFF or an HDF5 dataset; returns what was written."""
    data = np.asarray(probs, np.float32)
    if address.format == "hdf5":
        address = address.with_member(PROBABILITIES_DATASET)
        _write_hdf5(address, data, volume, overwrite)
    else:
        _write_tiff(address.path, data, volume)
    return str(address)


def write_cells(address: Address, cells: np.ndarray, volume: Volume | None = None, overwrite: bool = False) -> str:
    """Instance labels (N, H, W) as uint32: a TIFF, an HDF5 dataset or an OME-Zarr label image."""
    data = np.asarray(cells, np.uint32)
    if address.format == "zarr":
        _write_zarr_labels(address.path, data, volume)
    elif address.format == "hdf5":
        address = address.with_member(CELLS_DATASET)
        _write_hdf5(address, data, volume, overwrite)
    else:
        _write_tiff(address.path, data, volume)
    return str(address)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_masks(folder: Path, volume: Volume, probs: np.ndarray, threshold: float = 0.5) -> list[Path]:
    """One 8-bit PNG per slice: 255 where the foreground probability exceeds ``threshold``."""
    paths = []
    for name, p in zip(volume.names, probs):
        path = Path(folder) / f"{name}_mask.png"
        atomic_write_bytes(path, _png(np.where(p > threshold, 255, 0).astype(np.uint8)))
        paths.append(path)
    return paths


def write_overlays(folder: Path, volume: Volume, probs: np.ndarray, alpha: float = 0.5) -> list[Path]:
    """One RGB PNG per slice: the image with the membrane probability blended in red."""
    paths = []
    for name, img, p in zip(volume.names, volume.images, probs):
        grey = np.repeat(img[..., None], 3, axis=-1)
        red = np.zeros_like(grey)
        red[..., 0] = 1.0
        weight = (alpha * (1.0 - p))[..., None]
        rgb = np.clip((1 - weight) * grey + weight * red, 0, 1)
        path = Path(folder) / f"{name}_overlay.png"
        atomic_write_bytes(path, _png((rgb * 255).round().astype(np.uint8)))
        paths.append(path)
    return paths


def _same_place(a: Address, b: Address) -> bool:
    pa, pb = Path(a.location).resolve(), Path(b.location).resolve()
    return pa == pb or pa in pb.parents or pb in pa.parents


def check_outputs(inputs: Sequence[Address], outputs: Sequence[tuple[str, Address | None]]) -> None:
    """Refuse, before anything is computed, an output that is an input or inside one (or holds one),
    two outputs onto one place, and an output folder that cannot be written. ``outputs``: pairs
    of (the option that names it, its address)."""
    named = [(option, address) for option, address in outputs if address is not None]
    for option, out in named:
        if out.is_url:
            continue
        for source in inputs:
            if not source.is_url and _same_place(out, source):  # the input's own file too, not only its dataset
                same = Path(out.location).resolve() == Path(source.location).resolve()
                if option == "-o":
                    what = "the output is the input" if same else f"the output would write into the input {source.given}"
                else:
                    what = f"{option} would be written over the input {source.given}"
                raise DataError(f"{out.given}: {what}; choose another {option} (inputs are never written over)")
        check_folder(out.path if out.is_folder else out.path.parent)
    for i, (option, out) in enumerate(named):
        for other_option, other in named[i + 1:]:
            clash = out.location == other.location and (out.member == other.member or not (out.member and other.member))
            if out.is_folder and other.is_folder:  # one folder holds several outputs when their file names differ
                clash = clash and FOLDER_FILES.get(option) == FOLDER_FILES.get(other_option)
            if clash:
                raise UsageError(f"{other.given}: {other_option} would be written over the {option} output; give each its own")


def check_folder(folder: Path) -> None:
    try:
        check_writable(folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot write there ({exc.strerror or exc}); choose another output") from None
