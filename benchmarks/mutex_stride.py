"""The mutex watershed's long-range stride (segment.long_range_stride) against the cells' scores
and time: each bundled affinity model predicts its labelled stacks once, then its cells are cut at
every stride asked for and scored by the challenge's scorer.

    python benchmarks/mutex_stride.py                  # strides 1, 2, 4
    python benchmarks/mutex_stride.py --strides 1,2

The cases: `sstem-cells` on the six ISBI and six VNC sections held out of its training, and
`isbi-cells` on all 20 VNC sections (another lab's stack, which it never saw). Prints one line per
case and stride: cells V_rand, V_info, the seconds the cells took (calibration included) and the
cells per section.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from bundled_scores import CASES as BUNDLED_CASES, SHARED, case_volume  # this folder's: the same held-out sections

CASES = [(name, files, sections) for name in ("sstem-cells", "isbi-cells") for files, sections in BUNDLED_CASES[name]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strides", default="1,2,4", help="comma-separated strides (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding isbi2012/ and vnc-stack1/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the calibration says which bias it takes

    from emunet.infer.predictor import Predictor
    from emunet.score.challenge import score_segmentation_stack

    for name, files, held_out in CASES:
        predictor = Predictor.load(name, "cpu")
        volume = case_volume(predictor, files, held_out, args.data)
        prediction = predictor.predict(volume, progress=False)
        for stride in (int(s) for s in args.strides.split(",")):
            start = time.perf_counter()
            cells = prediction.cells(replace(predictor.segment, long_range_stride=stride), False)
            seconds = time.perf_counter() - start
            scores = score_segmentation_stack(cells, volume.labels)
            per_section = cells.reshape(len(cells), -1).max(axis=1).mean()
            print(f"{name} on {files[0].split('/')[0]} ({'held out: ' + str(held_out) if held_out else 'all'}), "
                  f"stride {stride}: cells V_rand {scores['v_rand']:.4f}, V_info {scores['v_info']:.4f}, "
                  f"{seconds:.1f} s, {per_section:.0f} cells per section", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
