"""Choose the segmentation settings: predict a fold once per checkpoint, then score its cells
(the challenge's V_rand and V_info of the label images) over a grid of ``segment.*`` settings.

    python benchmarks/segment_sweep.py runs/f0/best.safetensors runs/f2/best.safetensors \\
        --bias 0.4,0.5,0.6 --long-range-bias 0.5,0.7,0.9 --min-size 0,20,50

Each checkpoint is scored on its own run's validation fold (``--fold`` to choose another); the
table gives every setting's V_rand (split / merge) and V_info per checkpoint and their mean,
best mean first. Settings are chosen on folds 0, 2, 3 and 4 and then checked on fold 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time

from emunet.score.challenge import score_segmentation_stack
from emunet.io.data import load_labelled
from emunet.train.sampling import fold_split
from emunet.device import resolve_device, resolve_precision
from emunet.infer.predict import Prediction, load_models, predict_stack
from emunet.infer.segment import SegmentConfig


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--fold", type=int, help="score this fold instead of each run's own")
    parser.add_argument("--bias", type=_floats, default=[0.5])
    parser.add_argument("--long-range-bias", type=_floats, default=[0.5])
    parser.add_argument("--seed-threshold", type=_floats, default=[0.9], help="the membrane head's seeds")
    parser.add_argument("--min-size", type=_floats, default=[20])
    parser.add_argument("--map-watershed", action="store_true",
                        help="for affinity models, cut their interior map by the seeded watershed instead (a comparison)")
    parser.add_argument("--tta", action="store_true", help="predict with the 8 flips and turns (predict.tta)")
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    predictions = []
    for path in args.checkpoints:
        loaded = load_models([path], device)
        cfg = loaded.config
        fold = cfg.data.fold if args.fold is None else args.fold
        volume = load_labelled(cfg.data.images, cfg.data.labels, cfg.data.foreground, intensity=loaded.intensity)
        volume = volume.subset(fold_split(len(volume), fold, cfg.data.train_ratio)[1])
        pcfg = dataclasses.replace(cfg.predict, tta=args.tta or cfg.predict.tta)
        prediction = predict_stack(loaded.models, volume, pcfg, precision)
        if args.map_watershed:
            prediction = Prediction(prediction.probs)
        predictions.append((path, fold, volume, prediction))
    rows = []
    grid = itertools.product(args.bias, args.long_range_bias, args.seed_threshold, args.min_size)
    for bias, long_bias, seed, min_size in grid:
        setting = SegmentConfig(bias=bias, long_range_bias=long_bias, seed_threshold=seed, min_size=int(min_size))
        per_run = []
        start = time.perf_counter()
        for path, fold, volume, prediction in predictions:
            scored = score_segmentation_stack(prediction.cells(setting), volume.labels)
            per_run.append({k: scored[k] for k in ("v_rand", "v_rand_split", "v_rand_merge", "v_info")} | {"fold": fold})
        rows.append({"setting": vars(setting), "runs": per_run, "seconds": time.perf_counter() - start,
                     "mean_v_rand": statistics.fmean(r["v_rand"] for r in per_run),
                     "mean_v_info": statistics.fmean(r["v_info"] for r in per_run)})
    rows.sort(key=lambda r: -r["mean_v_rand"])
    for row in rows:
        s = row["setting"]
        runs = "  ".join(f"f{r['fold']} {r['v_rand']:.4f} ({r['v_rand_split']:.3f}/{r['v_rand_merge']:.3f})" for r in row["runs"])
        print(f"bias {s['bias']:.2f} long {s['long_range_bias']:.2f} seed {s['seed_threshold']:.2f} min {s['min_size']:3d}: "
              f"mean V_rand {row['mean_v_rand']:.4f} V_info {row['mean_v_info']:.4f} | {runs}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
