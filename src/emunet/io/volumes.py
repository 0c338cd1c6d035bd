"""Volumes too large for memory: Zarr (v2, v3), OME-Zarr, HDF5 and big TIFF stacks opened
lazily, read block by block; OME-Zarr written chunk by chunk.

A volume is addressed as

- ``data.zarr`` (an array, or an OME-Zarr image whose first resolution is used) or
  ``data.zarr/path/in/store`` (an array inside a group);
- ``data.h5:/path/in/file`` (an HDF5 dataset; ``.hdf5`` and ``.hdf`` too);
- ``stack.tif`` read through tifffile's Zarr view (no page is read until asked for).

Axes come from the metadata (OME-NGFF ``axes``, ImageJ/OME-TIFF axes, an HDF5 dataset's
``axes`` attribute) or the ``axes`` argument; without any, 2-D is ``yx`` and 3-D ``zyx``. A
volume with channels needs ``channel`` (never silently flattened); a time axis longer than one
is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .pixels import Calibration, Intensity, choose_intensity, read_calibration
from ..errors import DataError, StorageError, UsageError
from .places import Place
from .address import parse_address, Address
from .axes import samples_to_grey, tiff_roles

log = logging.getLogger("emunet")

__all__ = ["LazyVolume", "is_volume_path", "open_volume", "create_ome_zarr", "write_pyramid"]



def volume_stem(path: str | Path) -> str:
    """The name a volume's slices are named after: ``data`` for data.h5:/raw, data.zarr/raw or
    data.ome.zarr."""
    location = parse_address(path, what="input").path
    return (location.with_suffix("") if location.suffix.lower() == ".zarr" else location).stem


def volume_file(path: str | Path) -> Place:
    """The file or Zarr store that holds the volume ``path`` names (on a disk or a store)."""
    return Place(parse_address(path, what="input").location)


def is_volume_path(path: str | Path) -> bool:
    """Whether ``path`` names a Zarr or HDF5 volume (read lazily) rather than an image file or folder."""
    try:
        return parse_address(path, what="input").format in ("zarr", "hdf5")
    except UsageError:
        return False


GREY = "grey"  # in a LazyVolume's index: the colour samples' axis, read whole and made grey


@dataclass
class LazyVolume:
    """A stack of sections (``shape`` = (N, H, W)) read on demand: ``read(z, rows, cols)`` gives
    float32 pixels scaled by ``intensity``, ``raw(z, rows, cols)`` the stored values."""

    array: Any  # zarr array, h5py dataset or tifffile's zarr view: anything sliceable
    index: tuple  # per array axis: None (z, y, x), an int (a chosen channel) or GREY (colour samples)
    source: str
    axes: str
    calibration: Calibration | None = None
    intensity: Intensity | None = None
    keep_open: list = field(default_factory=list)  # files that must stay open while the array is read

    @property
    def shape(self) -> tuple[int, int, int]:
        dims = [n for n, i in zip(self.array.shape, self.index) if i is None]
        return (1, *dims) if len(dims) == 2 else tuple(dims)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def raw(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        spatial = iter([z, rows, cols] if sum(i is None for i in self.index) == 3 else [rows, cols])
        key = tuple(slice(None) if i is GREY else next(spatial) if i is None else i for i in self.index)
        window = np.asarray(self.array[key])
        if GREY not in self.index:
            return window
        kept = [i for i in self.index if i is None or i is GREY]  # the axes a window keeps ...
        if kept.count(None) == 3:
            kept.remove(None)  # ... less z, taken by its index (the first spatial axis)
        return samples_to_grey(np.moveaxis(window, kept.index(GREY), -1))

    def read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        raw = self.raw(z, rows, cols)
        out = np.empty(raw.shape, np.float32)
        self.intensity.apply(raw, out)
        return out

    def choose_scaling(self, recorded: Intensity | None, mode: str = "auto") -> None:
        """The checkpoint's scaling where it was chosen for this pixel type; else one chosen from
        the first, middle and last sections (a whole volume is not read for it)."""
        if recorded is not None and recorded.dtype == str(self.dtype):
            self.intensity = recorded
            return
        n, h, w = self.shape
        sample = [self.raw(z, slice(0, h), slice(0, w)) for z in sorted({0, n // 2, n - 1})]
        self.intensity = choose_intensity(sample, mode)


def _axes_index(axes: str, shape: tuple[int, ...], channel: int | None, source: str) -> tuple:
    axes = axes.lower()
    if len(axes) != len(shape):
        raise DataError(f"{source}: axes {axes!r} do not match the array's {len(shape)} dimensions {shape}")
    if "y" not in axes or "x" not in axes:
        raise DataError(f"{source}: axes {axes!r} have no y and x")
    index: list = []
    for name, size in zip(axes, shape):
        if name in "zyx":
            index.append(None)
        elif name == "g":
            index.append(GREY)  # colour samples, read whole and made grey
        elif name in "cs":
            if size > 1 and channel is None:
                raise DataError(f"{source}: the volume has {size} channels (axes {axes!r}); choose one with "
                                "data.channel / --channel")
            if channel is not None and not 0 <= channel < size:
                raise DataError(f"{source}: channel {channel} does not exist (the volume has {size})")
            index.append(channel or 0)
        elif size == 1:
            index.append(0)
        else:
            raise DataError(f"{source}: axis {name!r} of length {size} (axes {axes!r}); only z, y, x and a chosen "
                            "channel are read; cut the volume to one time point first")
    return tuple(index)


def _default_axes(ndim: int, source: str) -> str:
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "zyx"
    raise DataError(f"{source}: a {ndim}-D array without axes metadata; give its axes (e.g. 'czyx')")


def _open_zarr(address: Address) -> tuple[Any, str | None, Calibration | None]:
    import zarr

    path = str(address)
    if address.is_url:
        from .storage import check_store

        check_store(address.location)  # an unreachable store, missing credentials or bucket: said as such
    try:
        node = zarr.open(Place(path).zarr(read_only=True), mode="r")  # a URL: chunks read from the store as needed
    except StorageError:
        raise
    except Exception as exc:  # a missing path, a store of another kind
        raise DataError(f"{path}: not a readable Zarr array or group ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        axes = node.attrs.get("_ARRAY_DIMENSIONS") or node.attrs.get("axes")
        return node, "".join(axes).lower() if axes else None, None
    multiscales = node.attrs.get("multiscales") or (node.attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        raise DataError(f"{path}: a Zarr group without OME-NGFF multiscales; name the array inside it "
                        f"({', '.join(arrays[:4]) or 'it holds none'}), e.g. {path}/{arrays[0] if arrays else 'raw'}")
    first = multiscales[0]
    level = first["datasets"][0]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in first.get("axes", [])) or None
    calibration = None
    scale = next((t["scale"] for t in level.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    if scale and axes and "y" in axes and "x" in axes:
        units = {a.get("name"): a.get("unit") for a in first.get("axes", []) if isinstance(a, dict)}
        calibration = Calibration((float(scale[axes.index("x")]), float(scale[axes.index("y")])),
                                  float(scale[axes.index("z")]) if "z" in axes else None, units.get("x") or "pixel")
    return node[level["path"]], axes, calibration


def _open_hdf5(address: Address) -> tuple[Any, str | None, Any]:
    import h5py

    file_name, inner = address.location, address.member
    if not Path(file_name).is_file():
        raise DataError(f"{file_name}: path does not exist")
    handle = h5py.File(file_name, "r")
    if not inner:
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        if len(names) != 1:
            raise DataError(f"{file_name}: name the dataset to read, e.g. {file_name}:/{names[0] if names else 'raw'} "
                            f"(it holds {len(names)})")
        inner = names[0]
    if inner not in handle or not isinstance(handle[inner], h5py.Dataset):
        raise DataError(f"{file_name}: no dataset {inner!r} in the file")
    dataset = handle[inner]
    axes = dataset.attrs.get("axes")
    return dataset, str(axes).lower() if axes is not None else None, handle


def _open_tiff(path: str, channel: int | None) -> tuple[Any, str | None, Any]:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    series = tif.series[0]
    store = series.aszarr()
    array = zarr.open(store, mode="r")
    if not isinstance(array, zarr.Array):  # a pyramid: its first level
        array = array["0"]
    return array, tiff_roles(series.axes, tuple(array.shape), path, channel), tif


def open_volume(path: str | Path, channel: int | None = None, axes: str | None = None) -> LazyVolume:
    """A lazily read (N, H, W) volume from a Zarr array or OME-Zarr image, an HDF5 dataset or a
    TIFF stack (see the module's docstring for how each is named)."""
    text = str(path)
    keep: list = []
    calibration = None
    try:
        address = parse_address(text, ("zarr", "hdf5", "tiff"), what="volume")
    except UsageError:
        raise DataError(f"{text}: not a volume (a .zarr, an .h5 dataset or a .tif stack)") from None
    if address.is_url and address.format != "zarr":
        kind = {"hdf5": "an HDF5", "tiff": "a TIFF"}[address.format]
        raise DataError(f"{text}: {kind} volume on a store cannot be read block by block; "
                        "store it as Zarr or OME-Zarr there (or copy it to a local disk)")
    if address.format == "zarr":
        array, found_axes, calibration = _open_zarr(address)
    elif address.format == "hdf5":
        array, found_axes, handle = _open_hdf5(address)
        keep.append(handle)
    else:
        if not Path(text).is_file():
            raise DataError(f"{text}: path does not exist")
        array, found_axes, handle = _open_tiff(text, channel)
        keep.append(handle)
        calibration = read_calibration(Path(text))
    used_axes = (axes or found_axes or _default_axes(len(array.shape), text)).lower()
    index = _axes_index(used_axes, tuple(array.shape), channel, text)
    return LazyVolume(array, index, text, used_axes, calibration, keep_open=keep)


# ImageJ's and TIFF's short unit names -> the UDUNITS-2 names NGFF requires.
_NGFF_UNITS = MappingProxyType({"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "micron": "micrometer",
                                "mm": "millimeter", "cm": "centimeter", "m": "meter", "pm": "picometer", "å": "angstrom"})


def ngff_unit(unit: str) -> str:
    """A length unit as NGFF names it ('nm' -> 'nanometer'); an unknown one as it is."""
    return _NGFF_UNITS.get(unit.strip().lower(), unit)


def create_ome_zarr(place: Place, shape: tuple[int, int, int], chunks: tuple[int, int, int], dtype: str,
                    calibration: Calibration | None, name: str, levels: int = 1) -> Any:
    """An empty OME-Zarr image (NGFF 0.4, Zarr v2: what napari-ome-zarr and neuroglancer read)
    at ``place`` (a folder or a store's prefix): axes z, y, x, the input's scale, compressed
    chunks, ``levels`` resolutions each half the last in y and x. Returns the group; level ``i``
    is ``group[str(i)]``. An existing one of the same shape, chunks and type is opened as it is
    (a restarted prediction continues it)."""
    import zarr
    from numcodecs import Blosc

    if (place / ".zattrs").is_file():
        group = zarr.open_group(place.zarr(), mode="r+", zarr_format=2)
        level0 = group["0"]
        if tuple(level0.shape) == shape and tuple(level0.chunks) == chunks and str(level0.dtype) == dtype:
            return group
        raise DataError(f"{place}: holds an image of shape {tuple(level0.shape)}, chunks {tuple(level0.chunks)}, "
                        f"{level0.dtype}; this prediction is {shape}, {chunks}, {dtype}: choose another -o or remove it")
    if not place.is_free():
        raise DataError(f"{place}: exists and is not an OME-Zarr image this command wrote; choose another -o or remove it")
    group = zarr.open_group(place.zarr(), mode="w", zarr_format=2)
    dx, dy = calibration.pixel_size if calibration else (1.0, 1.0)
    dz = (calibration.spacing if calibration and calibration.spacing else 1.0)
    unit = ngff_unit(calibration.unit) if calibration and calibration.unit not in (None, "", "pixel") else None
    datasets = []
    for level in range(levels):
        f = 2**level
        level_shape = (shape[0], -(-shape[1] // f), -(-shape[2] // f))
        group.create_array(str(level), shape=level_shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE))
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [dz, dy * f, dx * f]}]})
    axes = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for a in axes:
            a["unit"] = unit
    group.attrs["multiscales"] = [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
                                   "type": "mean" if levels > 1 else None}]
    return group


def write_pyramid(group: Any) -> None:
    """Fill levels 1, 2, ... of an OME-Zarr image by 2 x 2 means of the level above, chunk by
    chunk (memory: a few chunks)."""
    levels = sorted(int(k) for k in group.array_keys())
    for level in levels[1:]:
        source, target = group[str(level - 1)], group[str(level)]
        cz, cy, cx = target.chunks
        for z in range(target.shape[0]):
            for y in range(0, target.shape[1], cy):
                for x in range(0, target.shape[2], cx):
                    block = np.asarray(source[z, 2 * y : 2 * (y + cy), 2 * x : 2 * (x + cx)], np.float32)
                    ph, pw = block.shape[0] % 2, block.shape[1] % 2
                    if ph or pw:
                        block = np.pad(block, ((0, ph), (0, pw)), mode="edge")
                    mean = block.reshape(block.shape[0] // 2, 2, block.shape[1] // 2, 2).mean(axis=(1, 3))
                    if target.dtype.kind in "iu":
                        mean = np.rint(mean)
                    target[z, y : y + mean.shape[0], x : x + mean.shape[1]] = mean.astype(target.dtype)
