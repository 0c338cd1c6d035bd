"""Does averaging the probability maps of independently trained models raise V_rand?

Scores each checkpoint alone, every pair, and all of them together on the validation fold
of the first checkpoint's run (fold 1 for the CPU preset), with that run's prediction settings;
the same figures as ``unet evaluate A B ...`` for each group, without predicting twice.

    python benchmarks/ensemble.py runs/ens600/seed1/last.safetensors runs/ens600/seed2/last.safetensors \\
        runs/ens600/seed3/last.safetensors
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import numpy as np

from emunet.io.data import Volume
from emunet.device import resolve_device
from emunet.score.evaluate import ScoreReport, score_prediction
from emunet.infer.predict import load_models, predict_raw, prediction_from_raw
from emunet.train.loop import load_split


@dataclass
class GroupScore:
    members: tuple[int, ...]
    report: ScoreReport


def score_groups(checkpoints: list[str], precision: str = "bf16") -> tuple[list[GroupScore], Volume]:
    """Every single checkpoint, pair and larger group scored on the first run's validation
    fold: each model predicts once; a group's mean map (or mean affinities) is then
    post-processed, segmented and scored exactly as ``unet evaluate A B ...`` does it."""
    loaded = load_models(checkpoints, resolve_device("cpu"))
    cfg = loaded.config
    _, volume = load_split(cfg)
    raw = [predict_raw(m, volume, cfg.predict, precision) for m in loaded.models]
    scores = []
    for size in range(1, len(raw) + 1):
        for members in itertools.combinations(range(len(raw)), size):
            mean = raw[members[0]].copy()
            for i in members[1:]:
                mean += raw[i]
            if len(members) > 1:
                mean /= np.float32(len(members))
            prediction = prediction_from_raw(mean, loaded.models[0].cfg.offsets, cfg.predict)
            scores.append(GroupScore(members, score_prediction(prediction, volume, cfg.segment)[0]))
    return scores, volume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="two or more .safetensors weights from runs on the same data")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints")
    for i, path in enumerate(args.checkpoints):
        print(f"model {i + 1}: {path}")
    scores, _ = score_groups(args.checkpoints, args.precision)
    for group in scores:
        name = {1: "single", 2: "pair"}.get(len(group.members), f"{len(group.members)} models")
        mean = group.report.mean
        print(f"{name:<10} {'+'.join(str(i + 1) for i in group.members):<12} V_rand {mean['v_rand']:.4f}  "
              f"V_info {mean['v_info']:.4f}  lab dice {mean['lab_dice']:.4f}  cells: V_rand {mean['cells_v_rand']:.4f}  "
              f"V_info {mean['cells_v_info']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
