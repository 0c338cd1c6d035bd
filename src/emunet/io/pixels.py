"""What pixels mean: their physical size (Calibration, as an ImageJ TIFF keeps it) and how raw
values become [0, 1] (Intensity, chosen once per data set and kept with the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

__all__ = ["Calibration", "read_calibration", "Intensity", "choose_intensity", "PLAUSIBLE_NM", "is_microscope_pixel"]

# A pixel a microscope could have recorded: 0.1 nm (beyond atomic resolution) to 1 mm (a
# photograph); outside it a calibration is a program's default (72 dpi) or a slip of units.
PLAUSIBLE_NM = (0.1, 1e6)


def is_microscope_pixel(nm: float) -> bool:
    """Whether ``nm`` could be a microscope's pixel size (see ``PLAUSIBLE_NM``)."""
    return math.isfinite(nm) and PLAUSIBLE_NM[0] <= nm <= PLAUSIBLE_NM[1]


@dataclass
class Calibration:
    """Physical pixel size (x, y) and section spacing (z) in ``unit``, as an ImageJ TIFF keeps
    them: carried from the input to the outputs, so Fiji and napari show real sizes."""

    pixel_size: tuple[float, float]
    spacing: float | None
    unit: str

    @property
    def is_dpi(self) -> bool:
        """Dots per inch: a printer's or a drawing program's setting (72, 96, 300 dpi), never a
        microscope's pixel size."""
        return self.unit.strip().lower() in ("inch", "in", "inches")

    def pixel_size_nm(self) -> float | None:
        """The x pixel size in nanometres, where the unit is one of length (else None)."""
        per_unit = _NANOMETRES.get(self.unit.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u"))
        return None if per_unit is None else self.pixel_size[0] * per_unit


_NANOMETRES = MappingProxyType({"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "micron": 1e3, "micrometer": 1e3,
                                "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7, "inch": 2.54e7,
                                "angstrom": 0.1, "a": 0.1})


def read_calibration(path: Path) -> Calibration | None:
    """The calibration of a TIFF's first page, or None where the file has none (1 pixel per
    unit and no unit, or not a TIFF)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            x_per_unit, y_per_unit = page.resolution
            meta = tif.imagej_metadata or {}
            unit = meta.get("unit") or {2: "inch", 3: "cm"}.get(int(page.resolutionunit), "")
    except Exception:  # no resolution tags, or an unreadable one: no calibration
        return None
    if not unit or x_per_unit <= 0 or y_per_unit <= 0 or (x_per_unit == 1 and y_per_unit == 1 and "spacing" not in meta):
        return None
    spacing = meta.get("spacing")
    return Calibration((1.0 / x_per_unit, 1.0 / y_per_unit), float(spacing) if spacing else None, str(unit))


@dataclass
class Intensity:
    """How a data set's raw pixel values become [0, 1]: ``(value - low) / (high - low)``,
    clipped. Chosen once per data set from all its images, recorded in the run and in its
    checkpoints, and applied as it is to the images a checkpoint later predicts (of the same
    pixel type), as nnU-Net and MONAI keep their normalisation with the model.
    """

    low: float
    high: float
    dtype: str  # the raw pixel type it was chosen for
    how: str  # in words: "8-bit", "12-bit", "range 0.1..2.5", "percentiles 0.5-99.5", ...

    def apply(self, arr: np.ndarray, out: np.ndarray) -> None:
        """Write ``arr`` scaled into the float32 ``out``; in place, so a large image costs one copy."""
        if arr.dtype == np.uint8 and (self.low, self.high) == (0.0, 255.0):
            # 8-bit by 255 in float32, bit for bit as the lab's pipeline (and earlier runs) scale it
            np.multiply(arr, np.float32(1.0 / 255), out=out, casting="unsafe")
            return
        span = self.high - self.low
        if span <= 0:
            out[...] = 0.0
            return
        out[...] = (arr.astype(np.float64) - self.low) / span
        np.clip(out, 0.0, 1.0, out=out)


def choose_intensity(slices: list[np.ndarray], mode: str = "auto") -> Intensity:
    """The data set's scaling. ``auto``: 8-bit by 255; other integers by the bit depth their
    largest value needs (12-bit data by 4095, not 65535); floats as they are when within [0, 1],
    else by the data set's range. ``percentile``: the 0.5 and 99.5 percentiles of all images."""
    dtype = str(slices[0].dtype)
    if mode == "percentile":
        sample = np.concatenate([a.ravel()[:: max(1, a.size // 100_000)] for a in slices]).astype(np.float64)
        low, high = np.percentile(sample, [0.5, 99.5])
        return Intensity(float(low), float(high), dtype, "percentiles 0.5-99.5")
    lo = min(float(a.min()) for a in slices)
    hi = max(float(a.max()) for a in slices)
    kind = slices[0].dtype.kind
    if slices[0].dtype == np.bool_:
        return Intensity(0.0, 1.0, dtype, "binary")
    if slices[0].dtype == np.uint8:
        return Intensity(0.0, 255.0, dtype, "8-bit")
    if kind in "ui" and lo >= 0:
        bits = max(8, int(np.ceil(np.log2(hi + 1))))
        return Intensity(0.0, float(2**bits - 1), dtype, f"{bits}-bit")
    if kind == "f" and lo >= 0.0 and hi <= 1.0:
        return Intensity(0.0, 1.0, dtype, "as is")
    return Intensity(lo, hi, dtype, f"range {lo:g}..{hi:g}")
