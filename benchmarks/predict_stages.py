"""Where one large section's prediction spends its time, stage by stage: the network (tiles), the
blur, the wall-gap closing and the cells, each the median of several runs in one process (single
runs of a few seconds vary by a fifth on a shared 2-core machine).

    python benchmarks/predict_stages.py isbi-membranes                 # the model's own settings
    python benchmarks/predict_stages.py isbi-membranes --tile 512      # another tile, its map compared
    python benchmarks/predict_stages.py isbi-cells --repeats 3

The section is the one the docs call big2048: the first 16 ISBI test slices tiled 4 x 4
(2048 x 2048). Precision as `unet predict` chooses it (`auto`). With --tile or --overlap the map
is also predicted with the model's own settings, and both are compared with the network applied
to the whole section at once (one tile, the same mirrored margin): the mean and largest
difference, and the share of pixels more than 0.05 off.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

TEST_VOLUME = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012" / "test-volume.tif"


def big_section() -> np.ndarray:
    """The first 16 ISBI test slices tiled 4 x 4, float32 in [0, 1]."""
    import tifffile

    slices = tifffile.imread(TEST_VOLUME)[:16].astype(np.float32) / 255.0
    return slices.reshape(4, 4, 512, 512).transpose(0, 2, 1, 3).reshape(2048, 2048)


def timed(stages: dict[str, list[float]], name: str, work):
    start = time.perf_counter()
    result = work()
    stages.setdefault(name, []).append(time.perf_counter() - start)
    return result


def one_run(model, image: np.ndarray, pcfg, scfg, precision: str, stages: dict[str, list[float]]) -> np.ndarray:
    """Predict and segment ``image`` once, adding each stage's seconds to ``stages``; the map."""
    from emunet.infer.postprocess import close_gaps_in_place, smooth_in_place
    from emunet.infer.segment import mutex_stack, seeded_watershed
    from emunet.infer.tiling import predict_image

    raw = timed(stages, "network", lambda: predict_image(model, image, **pcfg.tiling(precision)))
    if model.cfg.offsets:
        timed(stages, "cells", lambda: mutex_stack(raw[None], model.cfg.offsets, scfg))
        return raw
    timed(stages, "blur", lambda: smooth_in_place(raw, pcfg.smooth))
    timed(stages, "closing", lambda: close_gaps_in_place(raw, pcfg.close_gaps))
    timed(stages, "cells", lambda: seeded_watershed(raw, scfg.seed_threshold, scfg.min_size, scfg.seed_dynamics))
    return raw


def compare_with_whole(model, image: np.ndarray, pcfg, asked, precision: str) -> None:
    """How far the model's own tiling and the asked one are from the whole section in one tile."""
    from emunet.infer.tiling import predict_image

    settings = pcfg.tiling(precision)
    whole = predict_image(model, image, **{**settings, "tile": max(image.shape), "overlap": 0.0})
    for label, cfg in (("the model's own", pcfg), ("asked", asked)):
        tiled = predict_image(model, image, **cfg.tiling(precision))
        off = np.abs(tiled - whole)
        print(f"{label} tiles ({cfg.tile} px, overlap {cfg.overlap}) against the whole section: mean {off.mean():.5f}, "
              f"largest {off.max():.3f}, {(off > 0.05).mean() * 100:.3f} % of pixels more than 0.05 off")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a bundled model's name or a checkpoint")
    parser.add_argument("--tile", type=int, help="prediction tile (default: the model's)")
    parser.add_argument("--overlap", type=float, help="tile overlap (default: the model's)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per stage; the median is printed")
    args = parser.parse_args()

    import torch
    from emunet.config import SegmentConfig
    from emunet.device import resolve_precision
    from emunet.infer.predict import load_models

    loaded = load_models([args.model], torch.device("cpu"))
    model, pcfg = loaded.models[0], loaded.config.predict
    precision = resolve_precision("auto", torch.device("cpu"))
    asked = replace(pcfg, tile=args.tile or pcfg.tile, overlap=pcfg.overlap if args.overlap is None else args.overlap)
    scfg = getattr(loaded.config, "segment", SegmentConfig())
    image = big_section()
    stages: dict[str, list[float]] = {}
    one_run(model, image[:640, :640], asked, scfg, precision, {})  # warm-up: the network's kernels, the imports
    for _ in range(args.repeats):
        one_run(model, image, asked, scfg, precision, stages)
    medians = {name: statistics.median(times) for name, times in stages.items()}
    total = sum(medians.values())
    print(f"{args.model}, 2048 x 2048, {precision}, tile {asked.tile} overlap {asked.overlap}, median of {args.repeats}: "
          + ", ".join(f"{name} {t:.2f} s" for name, t in medians.items()) + f"; total {total:.2f} s, {4.194 / total:.2f} MP/s")
    if args.tile or args.overlap is not None:
        compare_with_whole(model, image, pcfg, asked, precision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
