"""Write the training set of the bundled models: every labelled section of ISBI 2012 and of VNC
stack 1 as one folder of 512 x 512 images and one of masks (the folder interface of ``unet train``).

    python scripts/two_stacks.py runs/two-stacks --isbi-copies 3
    unet train -c configs/models/isbi-membranes.yaml data.images=runs/two-stacks/images \
        data.labels=runs/two-stacks/masks --out runs/two-stacks-model

The runs made with it, and why the bundled models are not (yet) trained on both stacks:
docs/transfer.md#both-stacks-in-one-model-tried-not-shipped-2026-12-03.

ISBI's 30 slices are 512 x 512 already; each of VNC's 20 labelled 1024 x 1024 sections is cut into
its four 512 x 512 quarters, at its own 4.6 nm pixels (the recipes' scale jitter of 0.8-1.25
spans the two stacks' 4 and 4.6 nm). Tiles are drawn per image, so about 27 % of them come from
ISBI (30 of 110 images) and 73 % from VNC, as their pixel counts are; ``--isbi-copies 3`` writes
each ISBI slice three times (90 of 170). Masks are 0 / 255
(255 = cell interior) in both. The data's terms are in each stack's README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = (SHARED / "isbi2012" / "train-volume.tif", SHARED / "isbi2012" / "train-labels.tif")
VNC = (SHARED / "vnc-stack1" / "stack1-volume.tif", SHARED / "vnc-stack1" / "stack1-labels.tif")
SIDE = 512


def quarters(section: np.ndarray) -> list[np.ndarray]:
    """The 512 x 512 tiles that cover a section whose sides are multiples of 512."""
    rows, cols = section.shape[0] // SIDE, section.shape[1] // SIDE
    return [section[r * SIDE:(r + 1) * SIDE, c * SIDE:(c + 1) * SIDE] for r in range(rows) for c in range(cols)]


def pairs(isbi_copies: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) for every 512 x 512 training image of the two stacks, ISBI's slices
    ``isbi_copies`` times."""
    out = []
    for stack, (images, labels) in (("isbi", ISBI), ("vnc", VNC)):
        volume, masks = tifffile.imread(images), tifffile.imread(labels)
        if volume.shape != masks.shape or volume.dtype != np.uint8 or set(np.unique(masks)) != {0, 255}:
            raise SystemExit(f"{images}: expected uint8 sections with 0/255 masks of the same shape")
        for z, (image, mask) in enumerate(zip(volume, masks)):
            copies = isbi_copies if stack == "isbi" else 1
            for q, (tile, tile_mask) in enumerate(zip(quarters(image), quarters(mask))):
                out += [(f"{stack}_{z:02d}_{q}" + (f"_copy{c}" if c else ""), tile, tile_mask) for c in range(copies)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write images/ and masks/ into")
    parser.add_argument("--isbi-copies", type=int, default=1, help="write each ISBI slice this many times, so that "
                        "tiles are drawn from the two stacks about as often (3: 90 ISBI images beside VNC's 80)")
    args = parser.parse_args()
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    written = pairs(args.isbi_copies)
    for name, image, mask in written:
        tifffile.imwrite(args.out / "images" / f"{name}.tif", image)
        tifffile.imwrite(args.out / "masks" / f"{name}.tif", mask)
    print(f"{len(written)} images and masks in {args.out}/images and {args.out}/masks")


if __name__ == "__main__":
    main()
