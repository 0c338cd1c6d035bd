"""Images of another pixel size meet a model at its own: a stack is resized to the model's pixel
size before prediction, and what comes out is resized back to the images' grid (maps linearly,
cells by nearest neighbour), so a 4.6 nm stack is segmented as a 4 nm model saw its training
images, and the outputs still lie over the input pixel for pixel."""

from __future__ import annotations

import logging

import numpy as np

from ..io.data import Volume

__all__ = ["scale_factor", "to_model_scale", "resized"]

log = logging.getLogger("emunet")
TOLERANCE = 0.01  # pixel sizes within 1 % are the same: resizing would only blur


def scale_factor(volume: Volume, given_nm: float | None, model_nm: float | None) -> float:
    """How much larger the images' pixels are than the model's (1: predict as they are). The
    images' size is ``given_nm`` or their metadata's; unknown on either side means 1."""
    image_nm = given_nm or (volume.calibration.pixel_size_nm() if volume.calibration else None)
    if not image_nm or not model_nm:
        return 1.0
    factor = image_nm / model_nm
    return 1.0 if abs(factor - 1.0) <= TOLERANCE else factor


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
