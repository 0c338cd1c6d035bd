"""The bundled models' scores on the labelled sections they did not train on, as `unet evaluate`
computes them, with their own prediction settings or others given with --set.

    python benchmarks/bundled_scores.py                                   # every model, its own settings
    python benchmarks/bundled_scores.py --set predict.tile=512            # the same with another tile
    python benchmarks/bundled_scores.py --models isbi-cells --set predict.tile=512

The cases are the ones `models.json` reports: `sstem-membranes` and `sstem-cells` on the six ISBI
and six VNC sections held out of their training; `isbi-membranes` and `isbi-cells` on all 20 VNC
sections (another lab's stack, which they never saw), at the file's 4.6 nm. Prints one line per
model and case: the map's V_rand (its best threshold, chosen with the labels), V_info, the cells'
V_rand and V_info (what a user gets), the lab's dice, and the seconds that prediction and cells took.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI = ("isbi2012/train-volume.tif", "isbi2012/train-labels.tif")
VNC = ("vnc-stack1/stack1-volume.tif", "vnc-stack1/stack1-labels.tif")
ISBI_HELD_OUT, VNC_HELD_OUT = [4, 6, 7, 9, 18, 19], [0, 3, 11, 12, 15, 16]
CASES = {"sstem-membranes": [(ISBI, ISBI_HELD_OUT), (VNC, VNC_HELD_OUT)],
         "sstem-cells": [(ISBI, ISBI_HELD_OUT), (VNC, VNC_HELD_OUT)],
         "isbi-membranes": [(VNC, None)],
         "isbi-cells": [(VNC, None)]}


def case_volume(predictor, files: tuple[str, str], sections: list[int] | None, data: Path):
    """A case's labelled sections, read as ``predictor``'s models read images (also mutex_stride.py's)."""
    from emunet.io.data import load_labelled

    volume = load_labelled(data / files[0], data / files[1], 255, mask_threshold=predictor.config.data.mask_threshold,
                           channel=predictor.channel, intensity=predictor.intensity)
    return volume.subset(sections) if sections else volume


def score_case(name: str, files: tuple[str, str], sections: list[int] | None, overrides: list[str], data: Path) -> str:
    from emunet.infer.predictor import Predictor
    from emunet.score.evaluate import score_prediction

    predictor = Predictor.load(name, "cpu", overrides=overrides)
    volume = case_volume(predictor, files, sections, data)
    start = time.perf_counter()
    prediction = predictor.predict(volume, progress=False)
    report, _ = score_prediction(prediction, volume, predictor.segment, warn=False)
    seconds = time.perf_counter() - start
    m = report.mean
    where = f"{files[0].split('/')[0]} {'held out ' + str(sections) if sections else 'all'}"
    return (f"{name} on {where} (tile {predictor.settings.tile}): map V_rand {m['v_rand']:.4f}, V_info {m['v_info']:.4f}; "
            f"cells V_rand {m['cells_v_rand']:.4f}, V_info {m['cells_v_info']:.4f}; lab dice {m['lab_dice']:.4f}; {seconds:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated bundled models (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings to override, as `unet --set`")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding isbi2012/ and vnc-stack1/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in args.models.split(","):
        for files, sections in CASES[name]:
            print(score_case(name, files, sections, args.set, args.data), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
