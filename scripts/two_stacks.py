"""Write the training set of the bundled models: every labelled section of ISBI 2012 and of VNC
stack 1 as one folder of 512 x 512 images and one of masks (the folder interface of ``unet train``).

    python scripts/two_stacks.py runs/two-stacks --isbi-copies 3 --hold-out     # the sstem models' set
    unet train -c configs/models/sstem-membranes.yaml --out runs/sstem-membranes

The runs made with it, and what they decided: docs/transfer.md#both-stacks-in-one-model.

- **One pixel size.** VNC's 4.6 nm sections are resampled to ISBI's 4 nm (1024 -> 1178 px), the
  pixel size the models are trained and predict at, and each is cut into the four 512 x 512
  windows at its corners (they overlap in the middle).
- **One membrane.** VNC's labelled membranes are drawn thicker than ISBI's (about 41 nm against
  26 nm, measured on their centre lines): trained together, the two teach two widths, and the thin
  faint ISBI membranes lose. ``--membrane-nm W`` keeps of each VNC membrane only the pixels within
  W / 2 of its centre line (the centre line itself always stays, so no membrane is broken).
  Scores are always against the labels as they are.
- **Balance.** Tiles are drawn per image; ``--isbi-copies N`` writes each ISBI slice N times so
  that both stacks are drawn about as often (3: 90 ISBI images beside VNC's 80).
- ``--hold-out`` leaves out ISBI's fold-1 validation slices (4, 6, 7, 9, 18, 19) and the six VNC
  sections that ``benchmarks/fine_tune_vnc.py`` scores, and writes them to ``held-out/`` as
  stacks to score with ``unet evaluate`` (VNC's calibrated at its 4.6 nm, as the file is).

Masks are 0 / 255 (255 = cell interior) in both. The data's terms are in each stack's README: a
model trained on VNC carries its CC BY-NC-SA 3.0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.morphology import skeletonize

from emunet.infer.rescale import resized

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = (SHARED / "isbi2012" / "train-volume.tif", SHARED / "isbi2012" / "train-labels.tif", 4.0)
VNC = (SHARED / "vnc-stack1" / "stack1-volume.tif", SHARED / "vnc-stack1" / "stack1-labels.tif", 4.6)
MODEL_NM = 4.0
SIDE = 512
ISBI_HELD_OUT = [4, 6, 7, 9, 18, 19]  # fold_split(30, 1): the main job's validation slices
VNC_HELD_OUT = [16, 11, 3, 0, 15, 12]  # fold_split(20, 0, 0.7): benchmarks/fine_tune_vnc.py's scored six


def corner_windows(section: np.ndarray) -> list[np.ndarray]:
    """The SIDE x SIDE windows at the four corners of a section at least SIDE on a side (one
    window where it is exactly SIDE)."""
    h, w = section.shape
    tops, lefts = sorted({0, h - SIDE}), sorted({0, w - SIDE})
    return [section[t:t + SIDE, l:l + SIDE] for t in tops for l in lefts]


def at_model_size(image: np.ndarray, mask: np.ndarray, pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """A section and its mask resampled from ``pixel_nm`` to the models' 4 nm, as prediction
    resamples such a section (:func:`emunet.infer.rescale.resized`)."""
    if pixel_nm == MODEL_NM:
        return image, mask
    shape = tuple(round(s * pixel_nm / MODEL_NM) for s in image.shape)
    image = resized(image[None].astype(np.float32), shape, order=1)[0]
    interior = resized((mask > 0)[None].astype(np.float32), shape, order=0)[0] > 0.5
    return image.round().clip(0, 255).astype(np.uint8), np.where(interior, 255, 0).astype(np.uint8)


def thin_membranes(mask: np.ndarray, width_px: float) -> np.ndarray:
    """The mask with its membrane (0) kept only within ``width_px`` / 2 of the membrane's centre
    line; the centre line (a topological skeleton) always stays, so no membrane opens."""
    membrane = mask == 0
    centre = skeletonize(membrane)
    near = ndimage.distance_transform_edt(~centre) <= width_px / 2
    return np.where(membrane & near, 0, 255).astype(np.uint8)


def pairs(isbi_copies: int = 1, membrane_nm: float = 0.0, hold_out: bool = False):
    """(name, image, mask) for every 512 x 512 training image of the two stacks, and the held-out
    sections {stack: (images, labels)} (empty unless ``hold_out``)."""
    out, held = [], {}
    for stack, (images, labels, pixel_nm) in (("isbi", ISBI), ("vnc", VNC)):
        volume, masks = tifffile.imread(images), tifffile.imread(labels)
        if volume.shape != masks.shape or volume.dtype != np.uint8 or set(np.unique(masks)) != {0, 255}:
            raise SystemExit(f"{images}: expected uint8 sections with 0/255 masks of the same shape")
        left_out = (ISBI_HELD_OUT if stack == "isbi" else VNC_HELD_OUT) if hold_out else []
        if left_out:
            held[stack] = (volume[left_out], masks[left_out], pixel_nm)
        for z, (image, mask) in enumerate(zip(volume, masks)):
            if z in left_out:
                continue
            image, mask = at_model_size(image, mask, pixel_nm)
            if stack == "vnc" and membrane_nm:
                mask = thin_membranes(mask, membrane_nm / MODEL_NM)
            copies = isbi_copies if stack == "isbi" else 1
            for q, (tile, tile_mask) in enumerate(zip(corner_windows(image), corner_windows(mask))):
                out += [(f"{stack}_{z:02d}_{q}" + (f"_copy{c}" if c else ""), tile, tile_mask) for c in range(copies)]
    return out, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write images/ and masks/ into")
    parser.add_argument("--isbi-copies", type=int, default=1, help="write each ISBI slice this many times, so that "
                        "tiles are drawn from the two stacks about as often (3: 90 ISBI images beside VNC's 80)")
    parser.add_argument("--membrane-nm", type=float, default=0.0, help="keep VNC's labelled membranes only within "
                        "this width (nm) around their centre lines, as thick as ISBI's (26); 0: as labelled")
    parser.add_argument("--hold-out", action="store_true", help="leave out ISBI's fold-1 six and VNC's scored six, "
                        "written to OUT/held-out/ to score the recipe on")
    args = parser.parse_args()
    written, held = pairs(args.isbi_copies, args.membrane_nm, args.hold_out)
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for name, image, mask in written:
        tifffile.imwrite(args.out / "images" / f"{name}.tif", image)
        tifffile.imwrite(args.out / "masks" / f"{name}.tif", mask)
    for stack, (images, labels, pixel_nm) in held.items():
        (args.out / "held-out").mkdir(exist_ok=True)
        tifffile.imwrite(args.out / "held-out" / f"{stack}.tif", images, imagej=True, resolution=(1 / pixel_nm,) * 2,
                         metadata={"unit": "nm", "axes": "ZYX"})
        tifffile.imwrite(args.out / "held-out" / f"{stack}-labels.tif", labels, photometric="minisblack")
    print(f"{len(written)} images and masks in {args.out}/images and {args.out}/masks"
          + (f"; held out: {', '.join(held)} in {args.out}/held-out" if held else ""))


if __name__ == "__main__":
    main()
