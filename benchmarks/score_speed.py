"""Seconds the challenge's scores take on a real fold-1 map: 6 slices of 512 px at the 11
thresholds, as every validation computes them (the first call compiles the flood and is left out).

    python benchmarks/score_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tifffile

from emunet.score.challenge import score_stack

CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi-scoring"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", type=Path, default=CASE, help="folder with fold1_main_prob.tif and fold1_main_lab.tif")
    args = parser.parse_args()
    probs = tifffile.imread(args.cases / "fold1_main_prob.tif")
    labels = (tifffile.imread(args.cases / "fold1_main_lab.tif") == 255).astype(np.uint8)
    score_stack(probs[:1], labels[:1])  # compile
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = score_stack(probs, labels)
        times.append(time.perf_counter() - start)
    print(f"{len(probs)} slices of {probs.shape[1]} px, 11 thresholds: median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}); V_rand {result['v_rand']:.6f}, V_info {result['v_info']:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
