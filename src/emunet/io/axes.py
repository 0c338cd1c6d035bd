"""What each axis of a TIFF is, decided once for every reader: the whole-stack reader
(:func:`data.read_images`) and the lazy one (:func:`volumes.open_volume`) read a file alike, so
``-o x.tif`` and ``-o x.ome.zarr`` of one input hold the same sections.

The rule, from the axes tifffile reads from the metadata (ImageJ, OME, or the TIFF tags):

- Y and X are the image plane; one other axis longer than one (Z, T, Q, I, ...) holds the
  sections, and two are refused.
- Colour samples (an S axis of 2, 3 or 4: grey + alpha, RGB, RGBA) become grey (ITU-R 601 luma,
  alpha dropped), with a warning for 3 or 4: such a file is as often 3 sections saved as RGB.
- Channels (a C axis, or an S axis of another length) need a chosen channel; where there are no
  sections and none is chosen, they are read as the sections, with a warning, as ImageJ's stack
  functions do (a stack saved with the wrong axis name).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger("emunet")

__all__ = ["tiff_roles", "samples_to_grey", "COLOUR_SAMPLES"]

COLOUR_SAMPLES = (2, 3, 4)  # grey + alpha, RGB, RGBA
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


def tiff_roles(axes: str, shape: tuple[int, ...], path: str | Path, channel: int | None, warn: bool = True) -> str:
    """One letter per axis: ``z`` sections, ``y``/``x`` the plane, ``c`` a channel to choose,
    ``g`` colour samples that become grey, ``t`` an axis of length one."""
    axes = axes.upper()
    if len(axes) != len(shape):
        raise DataError(f"{path}: axes {axes!r} do not match the image's {len(shape)} dimensions {tuple(shape)}")
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: no image plane in the TIFF (axes {axes})")
    size = dict(zip(axes, shape))
    sections = [a for a in axes if a not in "YXCS" and size[a] > 1]
    if len(sections) > 1:
        raise DataError(f"{path}: the TIFF has more than one stack axis ({', '.join(sections)} in axes {axes}); "
                        "save the sections as one Z stack")
    roles = ""
    for a in axes:
        if a in "YX":
            roles += a.lower()
        elif a in sections:
            roles += "z"
        elif a == "S" and size[a] in COLOUR_SAMPLES:
            roles += "g"
        elif a in "CS" and size[a] > 1 and channel is None and not sections and "z" not in roles:
            if warn:
                log.warning(f"{path}: read the {size[a]} channels (axes {axes}) as sections; if they are channels of "
                            "one image, choose one with data.channel (or --channel)")
            roles += "z"
        elif a in "CS":
            roles += "c"
        else:
            roles += "t"  # an axis of length one
    if "g" in roles and size["S"] > 2 and warn:
        kind = "RGB" if size["S"] == 3 else "RGBA"
        log.warning(f"{path}: read as one {kind} image and reduced to grey; if these are {size['S']} sections, save "
                    "them as a stack (tifffile.imwrite(..., photometric='minisblack'), or ImageJ's 'Save As > Tiff' "
                    "of a stack)")
    return roles


def samples_to_grey(arr: np.ndarray) -> np.ndarray:
    """Colour samples on the last axis (2, 3 or 4) to grey of the same pixel type: RGB(A) by
    luma, grey + alpha by its grey; alpha dropped."""
    if arr.shape[-1] not in COLOUR_SAMPLES:
        raise DataError(f"expected 2, 3 or 4 colour samples, got {arr.shape[-1]}")
    if arr.shape[-1] == 2:
        return arr[..., 0]
    grey = arr[..., :3].astype(np.float64) @ np.array(_LUMA)
    return grey.astype(arr.dtype) if arr.dtype.kind == "f" else np.round(grey).astype(arr.dtype)
