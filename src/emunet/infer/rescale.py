"""Images of another pixel size meet a model at its own: a stack is resized to the model's pixel
size before prediction, and what comes out is resized back to the images' grid (maps linearly,
cells by nearest neighbour), so a 4.6 nm stack is segmented as a 4 nm model saw its training
images, and the outputs still lie over the input pixel for pixel."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError
from ..io.data import Volume
from ..io.pixels import PLAUSIBLE_NM, is_microscope_pixel

__all__ = ["scale_factor", "to_model_scale", "resized"]

log = logging.getLogger("emunet")
TOLERANCE = 0.01  # pixel sizes within 1 % are the same: resizing would only blur
# Sides a resized image may have: below, a model sees no cell whole; above, one slice is gigabytes.
MIN_SIDE, MAX_SIDE = 64, 100_000


def scale_factor(volume: Volume, given_nm: float | None, model_nm: float | None) -> float:
    """How much larger the images' pixels are than the model's (1: predict as they are). The
    images' size is ``given_nm`` or their metadata's; unknown on either side means 1.

    A metadata size that no microscope gives (dots per inch, under 0.1 nm or over 1 mm, or one
    that would resize a side under ``MIN_SIDE`` or over ``MAX_SIDE`` pixels) is ignored with one
    warning; such a ``given_nm`` is refused in one line, and one that contradicts the metadata
    wins with a warning."""
    metadata_nm = _metadata_pixel_size(volume, model_nm, say=not given_nm)
    image_nm = given_nm or metadata_nm
    if given_nm:
        _check_given(volume, given_nm, model_nm)
        if metadata_nm and abs(given_nm / metadata_nm - 1.0) > TOLERANCE:
            log.warning(f"{volume.source}: --pixel-size {given_nm:g} nm overrides the {metadata_nm:g} nm its metadata "
                        "says (drop --pixel-size to use the file's)")
    if not image_nm or not model_nm:
        return 1.0
    factor = image_nm / model_nm
    return 1.0 if abs(factor - 1.0) <= TOLERANCE else factor


def _metadata_pixel_size(volume: Volume, model_nm: float | None, say: bool = True) -> float | None:
    """The images' pixel size from their metadata, or None where they have none or where it
    cannot be a microscope's (then said once, where ``say``)."""
    cal = volume.calibration
    nm = cal.pixel_size_nm() if cal else None
    if nm is None:
        return None
    if cal.is_dpi:
        why = f"{1e7 * 2.54 / nm:.4g} dots per inch, a drawing program's setting"
    elif not is_microscope_pixel(nm):
        why = f"{nm:.4g} nm, outside {PLAUSIBLE_NM[0]:g} nm .. 1 mm"
    elif model_nm and (sides := _bad_sides(volume, nm / model_nm)):
        why = f"{nm:.4g} nm, which would resize the images to {sides} a side for the model's {model_nm:g} nm"
    else:
        return nm
    if say:
        log.warning(f"{volume.source}: its pixel size ({why}) cannot be a microscope's; ignored, the images are taken "
                    "as they are (give --pixel-size NM if you know it)")
    return None


def _check_given(volume: Volume, given_nm: float, model_nm: float | None) -> None:
    if not is_microscope_pixel(given_nm):
        raise DataError(f"--pixel-size {given_nm:g} nm cannot be a microscope's pixel: give one in "
                        f"{PLAUSIBLE_NM[0]:g} .. {PLAUSIBLE_NM[1]:g} nm (1 mm)")
    if model_nm and (sides := _bad_sides(volume, given_nm / model_nm)):
        raise DataError(f"{volume.source}: --pixel-size {given_nm:g} nm would resize its images to {sides} a side for the "
                        f"model's {model_nm:g} nm pixels (at most {MAX_SIDE:,}, at least {MIN_SIDE}): check the size and "
                        "its unit (nanometres)")


def _bad_sides(volume: Volume, factor: float) -> str | None:
    """'LOW .. HIGH px' where resizing by ``factor`` takes a side beyond MIN_SIDE .. MAX_SIDE (an
    image already smaller or larger may stay so), else None."""
    h, w = volume.images.shape[-2:]
    low, high = round(min(h, w) * factor), round(max(h, w) * factor)
    if low >= min(MIN_SIDE, h, w) and high <= max(MAX_SIDE, h, w):
        return None
    return f"{low} .. {high} px"


def resized(stack: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Each (..., H, W) page of ``stack`` resized to ``shape``: linear (``order`` 1, with
    anti-aliasing when shrinking) for images and maps, nearest (0) for labels."""
    from skimage.transform import resize

    if tuple(stack.shape[-2:]) == tuple(shape):
        return stack
    pages = stack.reshape(-1, *stack.shape[-2:])
    shrinking = shape[0] < stack.shape[-2]
    out = np.stack([resize(p, shape, order=order, preserve_range=True, anti_aliasing=bool(order and shrinking))
                    for p in pages]).astype(stack.dtype, copy=False)
    return out.reshape(*stack.shape[:-2], *shape)


def to_model_scale(volume: Volume, factor: float) -> Volume:
    """``volume`` resized by ``factor`` (its pixels ``factor`` times the model's: 1.15 makes a
    512 px slice 589 px), said once in the log."""
    h, w = volume.images.shape[-2:]
    shape = (max(1, round(h * factor)), max(1, round(w * factor)))
    log.info(f"{volume.source}: pixels {factor:.3g}x the model's; predicted at {shape[1]} x {shape[0]} and resized back")
    stack = resized(volume.stack, shape, 1)
    return Volume(stack[volume.z], volume.names, volume.source, stack=stack, z=volume.z, intensity=volume.intensity)
