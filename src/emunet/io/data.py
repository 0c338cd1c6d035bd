"""Reading EM images and masks, and checking them (the split and the tiles that training draws
are :mod:`emunet.train.sampling`'s).

Two layouts are read: a multi-page TIFF stack (the ISBI files) or a folder of single images
(PNG or TIFF), matched to a folder of masks by file name. Images become float32 in [0, 1],
grey; masks become uint8 class maps where 1 is the foreground (ISBI: cell interior).
Every problem a user can cause is a :class:`DataError` that names the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, ImageSizesDiffer
from .axes import COLOUR_SAMPLES, samples_to_grey, tiff_roles
from .pixels import Calibration, Intensity, choose_intensity, read_calibration
from .storage import local_copy
from .volumes import is_volume_path, open_volume, volume_stem

__all__ = ["DataError", "Calibration", "read_calibration", "Intensity", "choose_intensity", "scaling_for", "Volume", "read_each", "read_images", "read_labels", "load_labelled", "labelled_arrays", "volume_of_arrays", "masks_to_labels", "mirror_index"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# A foreground share below this is unlike EM cell interiors (ISBI: about 78 %): most likely
# masks whose polarity is the other way round.
FOREGROUND_WARNING_SHARE = 0.25
log = logging.getLogger("emunet")


@dataclass
class Volume:
    """A stack of grey images (N, H, W) float32 in [0, 1], with a name per slice.

    A subset remembers the whole stack it came from (``stack``, and each slice's position
    ``z`` in it), so that a 2.5-D model can still see a validation slice's neighbouring
    sections, which belong to the training subset.
    """

    images: np.ndarray
    names: list[str]
    source: Path
    labels: np.ndarray | None = None  # (N, H, W) uint8 in {0, 1}; 1 = foreground
    stack: np.ndarray | None = None  # the whole (Z, H, W) section stack; default: images
    z: list[int] | None = None  # each slice's index in ``stack``
    calibration: Calibration | None = None  # pixel size and section spacing, where the file says
    intensity: Intensity | None = None  # how the raw pixel values were scaled to [0, 1]

    def __post_init__(self) -> None:
        if self.stack is None:
            self.stack, self.z = self.images, list(range(len(self.images)))

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int]) -> "Volume":
        labels = None if self.labels is None else self.labels[indices]
        return Volume(self.images[indices], [self.names[i] for i in indices], self.source, labels,
                      stack=self.stack, z=[self.z[i] for i in indices], calibration=self.calibration,
                      intensity=self.intensity)

    def planes(self, i: int, context: int = 0) -> list[np.ndarray]:
        """Slice ``i`` with ``context`` neighbouring sections on each side, in stack order
        (views, no copies): the input channels of a 2.5-D model. The stack is mirrored at its
        ends (section -1 is section 0), as tiles are mirrored at image borders."""
        return [self.stack[j] for j in mirror_index(self.z[i] - context, 2 * context + 1, len(self.stack))]


def mirror_index(start: int, size: int, extent: int) -> np.ndarray:
    """Indices ``start .. start+size-1`` folded into ``0 .. extent-1`` by symmetric mirroring
    (numpy's 'symmetric' padding, to any depth): tiles are cut, and neighbouring sections
    found, without padding the data."""
    i = np.arange(start, start + size) % (2 * extent)
    return np.where(i < extent, i, 2 * extent - 1 - i)


def _read_file(path: Path, channel: int | None = None, channels_warning: bool = True) -> np.ndarray:
    """Read one image file as an array: (H, W) or (H, W, S) for PNG/JPEG (S: colour samples),
    (N, H, W) grey for TIFF (channels resolved by ``channel``)."""
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path, channel, channels_warning)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # corrupt, truncated or not an image at all
        raise DataError(f"{path}: cannot read as an image ({type(exc).__name__}: {exc})") from None
    if arr.size == 0:
        raise DataError(f"{path}: image is empty")
    return arr


class _ErrorLog(logging.Handler):
    """Collects the errors tifffile logs instead of raising (a broken page chain, say)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, channel: int | None = None, channels_warning: bool = True) -> np.ndarray:
    """A TIFF as (N, H, W) grey, by the axes its metadata declare (ImageJ, OME, or
    tifffile's reading of the tags), by the rule of :mod:`axes`: colour to grey, channels need
    ``channel`` unless there is one, one stack axis (Z, T, ...) becomes the slices."""
    import tifffile

    errors = _ErrorLog()
    logger = logging.getLogger("tifffile")
    logger.addHandler(errors)
    previous = logger.propagate
    logger.propagate = False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series
            if not series:
                raise DataError(f"{path}: TIFF file holds no images")
            if len({s.shape for s in series}) > 1:
                raise DataError(f"{path}: TIFF pages differ in size; all slices of a stack must share one size")
            arrays = [s.asarray() for s in series]
            axes = series[0].axes if len(series) == 1 else "I" + series[0].axes
            arr = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    finally:
        logger.removeHandler(errors)
        logger.propagate = previous
    if errors.messages:
        raise DataError(f"{path}: corrupt or truncated TIFF ({errors.messages[0]})")
    return _by_axes(arr, axes, path, channel, channels_warning)


def _by_axes(arr: np.ndarray, axes: str, path: Path, channel: int | None, channels_warning: bool = True) -> np.ndarray:
    """(N, H, W) from an array with tifffile axes, by the one rule of :func:`axes.tiff_roles`."""
    roles = tiff_roles(axes, arr.shape, path, channel, channels_warning)
    if "c" in roles:
        count = arr.shape[roles.index("c")]
        if channel is None and count > 1:
            raise DataError(f"{path}: the image has {count} channels (axes {axes}); choose one with data.channel "
                            "(or --channel), counting from 0")
        index = 0 if channel is None else channel
        if not 0 <= index < count:
            raise DataError(f"{path}: channel {index} asked for, but the image has {count} (0..{count - 1})")
        arr, roles = np.take(arr, index, axis=roles.index("c")), roles.replace("c", "", 1)
    order = [i for i, r in enumerate(roles) if r in "zt"] + [roles.index("y"), roles.index("x")]
    order += [roles.index("g")] if "g" in roles else []
    arr = np.transpose(arr, order)
    if "g" in roles:
        arr = samples_to_grey(arr)
    return arr.reshape(-1, *arr.shape[-2:])


def _to_grey(arr: np.ndarray, path: Path, stack: bool) -> np.ndarray:
    """Images without axes metadata (PNG, JPEG) as (N, H, W) or (H, W): colour samples on the last
    axis to grey (TIFFs are made grey by their axes, in :func:`_by_axes`)."""
    base = 3 if stack else 2
    if arr.ndim == base + 1 and arr.shape[-1] in COLOUR_SAMPLES:
        arr = samples_to_grey(arr)
    if arr.ndim != base:
        raise DataError(f"{path}: expected a grey or RGB(A) image, got an array of shape {arr.shape}")
    return arr


def scaling_for(slices: list[np.ndarray], files: list[Path], intensity: Intensity | None = None,
                mode: str = "auto") -> Intensity:
    """The one scaling for these raw slices, after checking their pixels: ``intensity`` (a
    checkpoint's) where it was chosen for this pixel type, else one chosen from them by ``mode``."""
    for arr, f in zip(slices, files):
        if arr.dtype != np.bool_ and arr.dtype.kind not in "uif":
            raise DataError(f"{f}: unsupported pixel type {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{f}: image contains NaN or infinite values")
        if arr.dtype != slices[0].dtype:
            raise DataError(f"{f}: pixel type {arr.dtype} differs from the first image's {slices[0].dtype}")
    if intensity is not None and intensity.dtype != str(slices[0].dtype):
        log.warning(f"{files[0]}: {slices[0].dtype} pixels, but the model's scaling was chosen for {intensity.dtype} "
                    "ones; scaling these by their own range instead")
        intensity = None
    return intensity or choose_intensity(slices, mode)


def _list_folder(folder: Path) -> list[Path]:
    """The folder's images in file-name order; other visible files are named in a warning."""
    entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p.name for p in entries if p not in files]
    if skipped:
        log.warning(f"{folder}: skipped {len(skipped)} file(s) that are not .png/.tif/.jpg images: "
                    f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    if not files:
        raise DataError(f"{folder}: folder holds no .png/.tif/.tiff/.jpg images")
    return files


def _one_image(path: Path, channel: int | None, channels_warning: bool) -> np.ndarray:
    """A single (H, W) grey image from a file of a folder."""
    arr = _read_file(path, channel, channels_warning)
    if path.suffix.lower() in (".tif", ".tiff"):
        if len(arr) != 1:
            raise DataError(f"{path}: holds {len(arr)} slices; a folder holds single images (give a stack as its file)")
        return arr[0]
    return _to_grey(arr, path, stack=False)


def unique_names(files: list[Path]) -> list[str]:
    """A name per file, for the outputs made from it: its stem, or where two files share a stem
    (``a.png`` and ``a.tif``) the stem and the suffix (``a_png``, ``a_tif``), so no output of
    one overwrites another's."""
    stems = [f.stem for f in files]
    return [f"{f.stem}_{f.suffix.lstrip('.').lower()}" if stems.count(f.stem) > 1 else f.stem for f in files]


def _read_raw(path: Path, channel: int | None = None, channels_warning: bool = True
              ) -> tuple[list[np.ndarray], list[str], list[Path]]:
    """Slices (each (H, W) grey, raw dtype), their names and the file each came from, from a
    stack file or a folder. Masks and maps read channels-only TIFFs as sections without a
    warning (``channels_warning``), as the challenge's Fiji scoring reads every plane. Zarr,
    OME-Zarr and HDF5 volumes are read whole (:mod:`volumes`; ``unet predict -o x.ome.zarr``
    predicts them block by block instead)."""
    if is_volume_path(path):
        volume = open_volume(path, channel)
        n, h, w = volume.shape
        stem = volume_stem(path)
        return [volume.raw(z, slice(0, h), slice(0, w)) for z in range(n)], [f"{stem}_{z:03d}" for z in range(n)], \
            [Path(str(path))] * n
    path = Path(path)
    if path.is_dir():
        files = _list_folder(path)
        return [_one_image(f, channel, channels_warning) for f in files], unique_names(files), files
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_file(path, channel, channels_warning)  # (N, H, W) grey already
    else:
        arr = _to_grey(_read_file(path, channel, channels_warning), path, stack=False)[None]
    return list(arr), [f"{path.stem}_{i:03d}" for i in range(len(arr))], [path] * len(arr)


def read_images(path: str | Path, min_size: int = 1, channel: int | None = None, intensity: Intensity | None = None,
                intensity_mode: str = "auto") -> Volume:
    """Read a stack or folder of images as float32 grey in [0, 1].

    Args:
        path: a (multi-page) TIFF, PNG or JPEG file, or a folder of them.
        min_size: smallest accepted height and width.
        channel: the channel of multi-channel images.
        intensity: a recorded scaling to apply (a checkpoint's); chosen from these images
            (by ``intensity_mode``) when None or recorded for another pixel type.
    """
    path = local_copy(path)  # a URL: its cached local copy
    if not path.exists() and not is_volume_path(path):
        raise DataError(f"{path}: path does not exist")
    slices, names, files = _read_raw(path, channel)
    first = slices[0].shape
    for arr, f in zip(slices, files):
        if min(arr.shape) < min_size:
            raise DataError(f"{f}: image is {arr.shape[0]}x{arr.shape[1]}, smaller than the minimum {min_size}x{min_size}")
        if arr.shape != first:
            raise ImageSizesDiffer(f"{f}: image shape {arr.shape} differs from the first image's {first}; all images must "
                                   "share one size")
    intensity = scaling_for(slices, files, intensity, intensity_mode)
    images = np.empty((len(slices), *first), np.float32)
    for i, arr in enumerate(slices):
        intensity.apply(arr, images[i])
    return Volume(images, names, path, calibration=read_calibration(files[0]), intensity=intensity)


def read_each(path: str | Path, channel: int | None = None, intensity: Intensity | None = None) -> list[Volume]:
    """Each image of a folder (or stack) as a one-slice volume of its own size, scaled alike:
    for predicting images of different sizes."""
    path = local_copy(path)  # a URL: its cached local copy
    if not path.exists() and not is_volume_path(path):
        raise DataError(f"{path}: path does not exist")
    slices, names, files = _read_raw(path, channel)
    intensity = scaling_for(slices, files, intensity)
    volumes = []
    for arr, name, f in zip(slices, names, files):
        image = np.empty((1, *arr.shape), np.float32)
        intensity.apply(arr, image[0])
        volumes.append(Volume(image, [name], f, calibration=read_calibration(f), intensity=intensity))
    return volumes


def read_labels(path: str | Path, foreground: int = 255, threshold: float | None = None) -> tuple[np.ndarray, list[Path]]:
    """Read masks as uint8 class maps, 1 where the mask equals ``foreground``.

    Masks must be two-valued, unless ``threshold`` is given (antialiased or resized masks):
    then values at or above it count as the high value, those below as the low one, and
    ``foreground`` at or above the threshold makes the high side the foreground. A foreground
    of less than a quarter of the pixels is warned about (inverted masks, most likely).
    """
    path = local_copy(path)  # a URL: its cached local copy
    if not path.exists() and not is_volume_path(path):
        raise DataError(f"{path}: path does not exist")
    slices, _, files = _read_raw(path, channels_warning=False)
    return masks_to_labels(slices, files, path, foreground, threshold), files


def masks_to_labels(slices: list[np.ndarray], files: list[Path], source: Path | str, foreground: int = 255,
                    threshold: float | None = None, warn: bool = True) -> np.ndarray:
    """Raw masks as uint8 class maps (1 = foreground), checked as :func:`read_labels` says."""
    path = source
    first = slices[0].shape
    for arr, f in zip(slices, files):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{f}: mask contains NaN or infinite values")
        if arr.shape != first:
            raise DataError(f"{f}: mask shape {arr.shape} differs from the first mask's {first}")
    if threshold is not None:
        high = foreground >= threshold
        labels = np.stack([((a >= threshold) == high).astype(np.uint8) for a in slices])
    else:
        values: set = set()
        for arr, f in zip(slices, files):
            values.update(np.unique(arr).tolist())
            if len(values) > 2:
                raise DataError(_not_two_valued(f, arr, values))
        if foreground not in values and len(values) == 2:
            raise DataError(f"{path}: foreground value {foreground} does not occur in the masks (values {sorted(values)}); "
                            "set it with --foreground (data.foreground in a config)")
        labels = np.stack([(a == foreground).astype(np.uint8) for a in slices])
    share = float(labels.mean())
    if warn and share < FOREGROUND_WARNING_SHARE:
        log.warning(f"{path}: the foreground (mask value {foreground}, the cell interior) covers only {share:.0%} of the "
                    "pixels; EM cell interiors usually cover most of them (ISBI: 78 %). If the masks mark membranes "
                    f"with {foreground}, set data.foreground to the other value")
    return labels


def _not_two_valued(file: Path, arr: np.ndarray, values: set) -> str:
    """Why a mask file is refused, with the setting that reads it: instance labels (an id per
    cell, 0 on the membranes) take a threshold of 1, grey masks one between their two levels."""
    shown = sorted(values)[:8]
    found = f"{file}: mask is not two-valued; found values {shown}{' ...' if len(values) > 8 else ''}; "
    if arr.dtype.kind in "iu" and min(values) == 0 and (len(values) > 16 or arr.dtype.itemsize > 1):
        return found + ("if these are instance labels (an id per cell, 0 on the membranes), set --mask-threshold 1 "
                        "(data.mask_threshold=1): every id of 1 or more is then cell interior")
    return found + "for antialiased or resized masks set --mask-threshold (data.mask_threshold), e.g. 128"


def labelled_arrays(images: np.ndarray, labels: np.ndarray, intensity: Intensity | None = None, intensity_mode: str = "auto",
                    source: str = "<array>") -> Volume:
    """A labelled stack from arrays in memory, as :func:`load_labelled` makes one from files:
    raw pixels (H, W) or (N, H, W), their labels of the same shape (1 = cell interior,
    0 = membrane), scaled by ``intensity`` (a checkpoint's) where it fits their pixel type."""
    stack, truth = np.asarray(images), np.asarray(labels)
    stack, truth = (stack[None] if stack.ndim == 2 else stack), (truth[None] if truth.ndim == 2 else truth)
    if stack.ndim != 3:
        raise DataError(f"{source}: expected an (H, W) image or an (N, H, W) stack, got shape {np.shape(images)}")
    if truth.shape != stack.shape:
        raise DataError(f"{source}: labels of shape {truth.shape} for images of shape {stack.shape}; give one label per pixel")
    values = np.unique(truth)
    if not set(values.tolist()) <= {0, 1}:
        raise DataError(f"{source}: labels must be 1 (cell interior) and 0 (membrane), got values {values[:6].tolist()}")
    volume = volume_of_arrays(stack, intensity, intensity_mode, source)
    volume.labels = truth.astype(np.uint8)
    return volume


def volume_of_arrays(stack: np.ndarray, intensity: Intensity | None = None, intensity_mode: str = "auto",
                     source: str = "<array>") -> Volume:
    """Raw pixels (N, H, W) in memory as a Volume, scaled as files are: by ``intensity`` (a
    checkpoint's) where it fits their pixel type, else by their own range (``intensity_mode``)."""
    scaling = scaling_for(list(stack), [Path(f"{source}[{i}]") for i in range(len(stack))], intensity, intensity_mode)
    scaled = np.empty(stack.shape, np.float32)
    for page, out in zip(stack, scaled):
        scaling.apply(page, out)
    return Volume(scaled, [f"image_{i:03d}" for i in range(len(stack))], Path(source), intensity=scaling)


def load_labelled(images: str | Path, labels: str | Path, foreground: int = 255, min_size: int = 1,
                  mask_threshold: float | None = None, channel: int | None = None, intensity: Intensity | None = None,
                  intensity_mode: str = "auto") -> Volume:
    """Read images (``channel`` of multi-channel ones; see :func:`read_images` for the scaling)
    and their masks, checking counts, names and shapes agree."""
    images, labels = local_copy(images), local_copy(labels)
    vol = read_images(images, min_size=min_size, channel=channel, intensity=intensity, intensity_mode=intensity_mode)
    lab, label_files = read_labels(labels, foreground, mask_threshold)
    if len(lab) != len(vol):
        raise DataError(f"{labels}: {len(lab)} masks for {len(vol)} images in {images}")
    if Path(images).is_dir() and Path(labels).is_dir():
        image_names = [n for n in vol.names]
        mask_names = [f.stem for f in label_files]
        missing = sorted(set(image_names) - set(mask_names))
        if missing:
            raise DataError(f"{labels}: no mask named like image {missing[0]!r} (masks are matched by file name)")
        order = {n: i for i, n in enumerate(mask_names)}
        lab = lab[[order[n] for n in image_names]]
    if lab.shape[1:] != vol.images.shape[1:]:
        raise DataError(f"{labels}: masks are {lab.shape[1]}x{lab.shape[2]} but images in {images} are {vol.images.shape[1]}x{vol.images.shape[2]}")
    vol.labels = lab
    return vol
