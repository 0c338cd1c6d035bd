"""How much a model loses on another microscope's look: a fold's slices (by default fold 1's
six, which the fold's model never trained on) under six shifts, scored exactly as the challenge
scores them (V_rand of the map, best threshold, and of the cells), against the clean slices.

    python benchmarks/domain_shift.py runs/isbi-cpu/best.safetensors
    python benchmarks/domain_shift.py runs/robust/last.safetensors --json runs/robust/shift.json
    python benchmarks/domain_shift.py runs/robust-s{1,2,3}/last.safetensors --tta   # seeds, and their mean
    python benchmarks/domain_shift.py runs/f1/last.safetensors --adapt-norm         # statistics of each shifted stack
    python benchmarks/domain_shift.py sstem-cells --images ../shared/data/isbi2012/train-volume.tif \
        --labels ../shared/data/isbi2012/train-labels.tif                          # a bundled model; fold 1 held out

The shifts: gamma 0.6 and 1.6 (grey values to that power), Gaussian blur of std 1.5 px,
Poisson noise of 20 electrons per pixel, and pixel sizes 0.85x and 1.2x the model's (the slices
resized, the model told their pixel size, so it predicts them at its own: ``predict.pixel_size``).
The ISBI slices are 4 nm; ``--pixel-size`` sets another data set's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from emunet.infer.predictor import Predictor
from emunet.io.data import read_labels
from emunet.train.sampling import fold_split
from emunet.score.evaluate import score_prediction

SHIFTS = [("clean", {}), ("gamma 0.6", {"gamma": 0.6}), ("gamma 1.6", {"gamma": 1.6}), ("blur 1.5 px", {"blur": 1.5}),
          ("Poisson, 20 e-/px", {"electrons": 20.0}), ("pixels 0.85x", {"scale": 0.85}), ("pixels 1.2x", {"scale": 1.2})]


def shifted(images: np.ndarray, masks: np.ndarray, gamma: float = 1.0, blur: float = 0.0, electrons: float = 0.0,
            scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 slices and their 0/1 masks under one shift; ``scale`` resizes both (pixels
    ``1/scale`` times as large: 0.85 shows 4 nm pixels at 4.7 nm)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    grey = images.astype(np.float64) / 255.0
    if scale != 1.0:
        shape = (round(images.shape[1] * scale), round(images.shape[2] * scale))
        grey = np.stack([resize(g, shape, order=1, anti_aliasing=scale < 1) for g in grey])
        masks = np.stack([resize(m, shape, order=0, preserve_range=True, anti_aliasing=False) for m in masks]).astype(np.uint8)
    grey = grey ** gamma
    if blur:
        grey = np.stack([gaussian_filter(g, blur) for g in grey])
    if electrons:
        grey = rng.poisson(grey * electrons) / electrons
    return np.clip(grey * 255, 0, 255).round().astype(np.uint8), masks


def measure(checkpoint: str, fold: int, pixel_nm: float, tta: bool = False, adapt_norm: bool = False,
            stack: tuple[str, str] | None = None) -> list[dict]:
    overrides = ([f"data.pixel_size={pixel_nm}"] + (["predict.tta=true"] if tta else [])
                 + (["predict.adapt_norm=true"] if adapt_norm else []))
    base = Predictor.load(checkpoint, "auto", overrides=overrides)  # loaded once
    cfg = base.config
    import tifffile

    images_path, labels_path = stack or (cfg.data.images, cfg.data.labels)
    images = tifffile.imread(images_path)
    order = fold_split(len(images), fold)[1]  # the lab's split (a model trained on every slice: fold 1 all the same)
    images = images[order]
    masks, _ = read_labels(labels_path, cfg.data.foreground)
    masks = masks[order]
    rows = []
    for name, shift in SHIFTS:
        shown, truth = shifted(images, masks, **shift)
        told = replace(base.settings, pixel_size=pixel_nm / shift.get("scale", 1.0))  # the model told the slices' size
        predictor = replace(base, settings=told)
        volume = predictor.read(shown)
        volume.labels = truth
        report, _ = score_prediction(predictor.predict(volume), volume, predictor.segment, warn=False)
        rows.append({"shift": name, "v_rand": report.mean["v_rand"], "cells_v_rand": report.mean["cells_v_rand"],
                     "lab_dice": report.mean["lab_dice"]})
    return rows


def _print_table(title: str, rows: list[dict]) -> None:
    print(f"{title}\n| shift | V_rand (map) | drop | V_rand (cells) | drop |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shift']} | {r['v_rand']:.4f} | {r['drop']:+.4f} | {r['cells_v_rand']:.4f} | {r['cells_drop']:+.4f} |")
    print(f"largest drop of the map's V_rand: {max(r['drop'] for r in rows[1:]):.4f}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="one or more (e.g. seeds of one recipe: their mean is given too)")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--pixel-size", type=float, default=4.0, help="the data set's pixel size, nm (ISBI: 4)")
    parser.add_argument("--tta", action="store_true", help="predict with the 8 flips and turns (predict.tta)")
    parser.add_argument("--adapt-norm", action="store_true",
                        help="re-estimate the batch-norm statistics on each shifted stack (predict.adapt_norm)")
    parser.add_argument("--images", help="a stack to split instead of the run's data.images (a model trained on a folder: "
                        "the ISBI training volume, whose fold-1 slices the two-stack models held out)")
    parser.add_argument("--labels", help="its masks (with --images)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for checkpoint in args.checkpoints:
        stack = (args.images, args.labels) if args.images else None
        rows = measure(checkpoint, args.fold, args.pixel_size, args.tta, args.adapt_norm, stack)
        for r in rows:
            r["drop"] = rows[0]["v_rand"] - r["v_rand"]
            r["cells_drop"] = rows[0]["cells_v_rand"] - r["cells_v_rand"]
        _print_table(f"{checkpoint}, fold {args.fold}{', tta' if args.tta else ''}{', adapt-norm' if args.adapt_norm else ''}", rows)
        runs.append({"checkpoint": checkpoint, "rows": rows})
    if len(runs) > 1:  # paired drops, averaged over the models
        mean = [{key: (row["shift"] if key == "shift" else float(np.mean([run["rows"][i][key] for run in runs])))
                 for key in row} for i, row in enumerate(runs[0]["rows"])]
        _print_table(f"mean of {len(runs)} models", mean)
    if args.json:
        args.json.write_text(json.dumps({"fold": args.fold, "tta": args.tta, "adapt_norm": args.adapt_norm, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
