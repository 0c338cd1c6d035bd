"""The picture in docs/transfer.md: a VNC section that the two-stack models held out, as it is and
under shot noise (another microscope's look), with the cells of the ISBI-only membrane model and of
the two-stack one, each scored by the challenge's V_rand against the section's labels.

    python scripts/transfer_figure.py docs/transfer.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.color import label2rgb  # noqa: E402

from emunet.infer.predictor import Predictor  # noqa: E402
from emunet.score.challenge import score_segmentation_stack  # noqa: E402

VNC = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc-stack1"
SECTION, WINDOW = 16, (slice(256, 768), slice(256, 768))  # held out by scripts/two_stacks.py --hold-out
MODELS = ("isbi-membranes", "sstem-membranes")
ELECTRONS = 20  # per pixel: the shot noise of benchmarks/domain_shift.py


def looks(image: np.ndarray) -> dict[str, np.ndarray]:
    electrons = np.random.default_rng(0).poisson(image / 255.0 * ELECTRONS)
    return {"as imaged": image, f"shot noise, {ELECTRONS} e-/px": np.clip(electrons / ELECTRONS * 255, 0, 255).astype(np.uint8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    image = tifffile.imread(VNC / "stack1-volume.tif")[SECTION][WINDOW]
    truth = (tifffile.imread(VNC / "stack1-labels.tif")[SECTION][WINDOW] > 0).astype(np.uint8)
    predictors = {name: Predictor.load(name, "cpu", overrides=["predict.pixel_size=4.6"]) for name in MODELS}
    shown = looks(image)
    fig, axes = plt.subplots(len(shown), 1 + len(MODELS), figsize=(4 * (1 + len(MODELS)), 4 * len(shown)))
    for row, (look, pixels) in zip(axes, shown.items()):
        row[0].imshow(pixels, cmap="gray")
        row[0].set_title(f"VNC section {SECTION}, {look}")
        for ax, (name, predictor) in zip(row[1:], predictors.items()):
            cells = predictor.cells(pixels)
            v_rand = score_segmentation_stack(cells[None], truth[None])["v_rand"]
            ax.imshow(label2rgb(cells, image=pixels, bg_label=0, alpha=0.35, kind="overlay"))
            ax.set_title(f"{name}: cells V_rand {v_rand:.3f}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    # 256 colours: a third of the size, the same picture to the eye
    Image.open(args.out).convert("RGB").quantize(colors=256).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
