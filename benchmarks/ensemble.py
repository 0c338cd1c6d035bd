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
from dataclasses import replace

from emunet.checkpoint import load_model
from emunet.config import config_from_dict
from emunet.evaluate import predict_volume, score_probabilities
from emunet.postprocess import smooth_in_place
from emunet.train import load_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="two or more .safetensors weights from runs on the same data")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints")
    loaded = [load_model(p) for p in args.checkpoints]
    models, run = [m for m, _ in loaded], loaded[0][1]["config"]
    cfg = config_from_dict({k: v for k, v in run.items() if k != "model_resolved"})
    _, volume = load_split(cfg)
    pcfg = cfg.predict
    # each model's raw probabilities once; the blur goes on the mean, as `unet evaluate A B` does
    probs = [predict_volume(m, volume, replace(pcfg, smooth=0.0), args.precision) for m in models]

    def report(name: str, members: tuple[int, ...]) -> None:
        mean_probs = sum(probs[i] for i in members) / len(members)
        for page in mean_probs:
            smooth_in_place(page, pcfg.smooth)
        mean = score_probabilities(mean_probs, volume)["mean"]
        print(f"{name:<10} {'+'.join(str(i + 1) for i in members):<12} V_rand {mean['v_rand']:.4f}  "
              f"V_info {mean['v_info']:.4f}  lab dice {mean['lab_dice']:.4f}", flush=True)

    for i, path in enumerate(args.checkpoints):
        print(f"model {i + 1}: {path}")
    for size in range(1, len(models) + 1):
        for members in itertools.combinations(range(len(models)), size):
            report({1: "single", 2: "pair"}.get(size, f"{size} models"), members)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
