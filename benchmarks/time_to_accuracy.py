"""Time to accuracy on fold 1: training seconds until the lab's dice first reaches 0.911, the
V_rand at that point, and the best V_rand within the run (with its training seconds).

Training seconds leave validation out (the ``train_s`` column of metrics.csv); validation runs
every ``--val-every`` steps so the crossing is seen early.

    python benchmarks/time_to_accuracy.py                              # the CPU preset
    python benchmarks/time_to_accuracy.py -c configs/isbi-cpu.yaml train.steps=1800 train.seed=2
    python benchmarks/time_to_accuracy.py --seeds 1,2,3 --val-every 100 --out runs/tta-10min train.steps=1300
    python benchmarks/time_to_accuracy.py -c configs/isbi-affinities.yaml --seeds 1,2,3 --out runs/tta-affinities

The validations along the way are plain; ``scored_*`` is the kept weights' score as the run reports
it, with the preset's test-time turns where it predicts with them (the main job's).
Every run reports the V_rand of its map and of its cells (the seeded watershed of the membrane
head's map, the mutex watershed of the affinity head's affinities).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from emunet.config import load_config
from emunet.train.loop import train

LAB_DICE = 0.911


def summarise(metrics: Path) -> dict:
    """The run's crossing of the lab's dice, and the V_rand of its map and of its cells, at best
    and at the end."""
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_lab_dice")]
    first = next((r for r in rows if float(r["val_lab_dice"]) >= LAB_DICE), None)
    best = max(rows, key=lambda r: float(r["val_v_rand"]))
    cells = {}
    if rows[-1].get("val_cells_v_rand"):
        best_cells = max(rows, key=lambda r: float(r["val_cells_v_rand"]))
        cells = {"best_cells_v_rand": float(best_cells["val_cells_v_rand"]), "best_cells_v_rand_step": int(best_cells["step"]),
                 "best_cells_v_rand_train_s": float(best_cells["train_s"]),
                 "final_cells_v_rand": float(rows[-1]["val_cells_v_rand"]),
                 "final_cells_v_info": float(rows[-1]["val_cells_v_info"])}
    return cells | {
        "steps_to_lab_dice": int(first["step"]) if first else None,
        "train_s_to_lab_dice": float(first["train_s"]) if first else None,
        "v_rand_at_lab_dice": float(first["val_v_rand"]) if first else None,
        "best_v_rand": float(best["val_v_rand"]),
        "best_v_rand_step": int(best["step"]),
        "best_v_rand_train_s": float(best["train_s"]),
        "final_step": int(rows[-1]["step"]),
        "final_train_s": float(rows[-1]["train_s"]),
        "final_lab_dice": float(rows[-1]["val_lab_dice"]),
        "final_v_rand": float(rows[-1]["val_v_rand"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="configs/isbi-cpu.yaml")
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--out", default="runs/time-to-accuracy")
    parser.add_argument("--seeds", default="", help="comma-separated seeds: one run each (in OUT/seedN), then mean and spread")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    for seed in seeds or [None]:
        out = f"{args.out}/seed{seed}" if seed is not None else args.out
        extra = [f"train.seed={seed}"] if seed is not None else []
        cfg = load_config(args.config, [f"train.val_every={args.val_every}", f"out_dir={out}", *args.overrides, *extra])
        start = time.perf_counter()
        kept = train(cfg, progress=False)
        result = {"seed": cfg.train.seed} | summarise(Path(cfg.out_dir) / "metrics.csv") | scored(kept, cfg) | {
            "wall_s": time.perf_counter() - start}
        print(json.dumps(result, indent=2), flush=True)
        runs.append(result)
    if len(runs) > 1:
        print(json.dumps(spread(runs), indent=2))
    return 0


def scored(kept, cfg) -> dict:
    """The kept weights' score as the run reports it (eval.json): with the preset's test-time turns
    where it predicts with them, while the validations along the way (metrics.csv) are plain."""
    if kept is None or kept.report is None:
        return {}
    mean = kept.report.mean
    return {"scored_tta": cfg.predict.tta, "scored_lab_dice": mean["lab_dice"], "scored_v_rand": mean["v_rand"],
            "scored_v_info": mean["v_info"], "scored_cells_v_rand": mean["cells_v_rand"]}


def spread(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, min and max over seeds of the headline figures."""
    keys = ("scored_v_rand", "scored_cells_v_rand", "scored_lab_dice", "final_v_rand", "best_v_rand", "final_cells_v_rand",
            "final_cells_v_info", "best_cells_v_rand", "final_lab_dice", "final_train_s", "train_s_to_lab_dice")
    out: dict = {"seeds": [r["seed"] for r in runs]}
    for k in keys:
        values = [r[k] for r in runs if r.get(k) is not None]
        if values:
            out[k] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "min": min(values), "max": max(values)}
    return out


if __name__ == "__main__":
    sys.exit(main())
