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

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = [("sstem-cells", "isbi2012/train-volume.tif", "isbi2012/train-labels.tif", [4, 6, 7, 9, 18, 19]),
         ("sstem-cells", "vnc-stack1/stack1-volume.tif", "vnc-stack1/stack1-labels.tif", [0, 3, 11, 12, 15, 16]),
         ("isbi-cells", "vnc-stack1/stack1-volume.tif", "vnc-stack1/stack1-labels.tif", None)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strides", default="1,2,4", help="comma-separated strides (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding isbi2012/ and vnc-stack1/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the calibration says which bias it takes

    from emunet.infer.predictor import Predictor
    from emunet.io.data import load_labelled
    from emunet.score.challenge import score_segmentation_stack

    for name, images, labels, held_out in CASES:
        predictor = Predictor.load(name, "cpu")
        volume = load_labelled(args.data / images, args.data / labels, 255, mask_threshold=predictor.config.data.mask_threshold,
                               channel=predictor.channel,
                               intensity=predictor.intensity)
        volume = volume.subset(held_out) if held_out else volume
        prediction = predictor.predict(volume, progress=False)
        for stride in (int(s) for s in args.strides.split(",")):
            start = time.perf_counter()
            cells = prediction.cells(replace(predictor.segment, long_range_stride=stride), False)
            seconds = time.perf_counter() - start
            scores = score_segmentation_stack(cells, volume.labels)
            per_section = cells.reshape(len(cells), -1).max(axis=1).mean()
            print(f"{name} on {images.split('/')[0]} ({'held out: ' + str(held_out) if held_out else 'all'}), "
                  f"stride {stride}: cells V_rand {scores['v_rand']:.4f}, V_info {scores['v_info']:.4f}, "
                  f"{seconds:.1f} s, {per_section:.0f} cells per section", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
