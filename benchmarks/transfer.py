"""How a model holds on a stack of another lab and microscope: train on one labelled stack, score
the other zero-shot, both ways, and fine-tune on three sections of the new stack.

    python benchmarks/transfer.py --out runs/transfer --seeds 1,2,3
    python benchmarks/transfer.py --out runs/transfer-robust --recipe configs/isbi-robust.yaml --no-fine-tune
    python benchmarks/transfer.py --table runs/transfer/transfer.json runs/transfer-robust/transfer.json

The stacks (../shared/data): ISBI 2012 (30 labelled 512 x 512 sections, 4 nm pixels) and VNC
stack 1 (20 labelled 1024 x 1024 sections of another larva, 4.6 nm, calibrated in its file).

1. Zero-shot, both ways: the recipe trained on every labelled section of one stack
   (``data.train_ratio=1``, the last step, ``data.pixel_size`` the stack's), then ``unet evaluate``
   on every labelled section of the other, as a user would run it (the file's pixel size is read
   from its metadata): the map's V_rand (best of the thresholds, chosen with the labels) and the
   cells' V_rand (no label chooses anything), exact challenge scorer.
2. Fine-tuning on VNC: ``unet train --from`` the ISBI model on three VNC sections
   (``data.train_ratio=0.15``: the lab's split of 20 gives 3 / 17), the other 17 scored every
   ``--val-every`` steps; against the recipe from scratch on the same three, and from scratch on
   the 17 (scored on the three: the figure of a model that had the whole stack).

Every run is a ``unet`` command; the folders stay under ``--out`` (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from emunet.cli import main as unet
from emunet.train.sampling import fold_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STACKS = {
    "ISBI": {"images": SHARED / "isbi2012" / "train-volume.tif", "labels": SHARED / "isbi2012" / "train-labels.tif",
             "pixel_size": 4.0},
    "VNC": {"images": SHARED / "vnc-stack1" / "stack1-volume.tif", "labels": SHARED / "vnc-stack1" / "stack1-labels.tif",
            "pixel_size": 4.6},
}
TUNE_RATIO = 0.15  # of VNC's 20 labelled sections: 3 train, 17 are scored


def run(args: list[str], folder: Path, overwrite: bool) -> Path:
    """``unet train ARGS --out folder`` unless it finished before; its last weights."""
    last = folder / "last.safetensors"
    if last.exists() and not overwrite:
        return last
    start = time.perf_counter()
    assert unet(["train", *args, "--out", str(folder), "-q", "--overwrite"]) == 0, folder
    print(f"  trained {folder.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return last


def evaluate(checkpoint: Path, images: Path, labels: Path, out: Path) -> dict:
    assert unet(["evaluate", str(checkpoint), "--images", str(images), "--labels", str(labels), "--json", str(out), "-q"]) == 0
    mean = json.loads(out.read_text())["mean"]
    return {"map": mean["v_rand"], "cells": mean["cells_v_rand"]}


def trained_on(stack: str, recipe: Path, seed: int, extra: list[str]) -> list[str]:
    data = STACKS[stack]
    return ["-c", str(recipe), f"data.images={data['images']}", f"data.labels={data['labels']}", "data.train_ratio=1",
            "data.test_images=null", f"data.pixel_size={data['pixel_size']}", "train.select_by=last", f"train.seed={seed}",
            *extra]


def zero_shot(recipe: Path, seed: int, out: Path, extra: list[str], overwrite: bool) -> dict:
    rows = {}
    for source, target in (("ISBI", "VNC"), ("VNC", "ISBI")):
        model = run(trained_on(source, recipe, seed, extra), out / f"{source.lower()}-{seed}", overwrite)
        scored = evaluate(model, STACKS[target]["images"], STACKS[target]["labels"], out / f"{source}-to-{target}-{seed}.json")
        rows[f"{source} -> {target}"] = scored
        print(f"  {source} -> {target}, seed {seed}: map {scored['map']:.4f}, cells {scored['cells']:.4f}", flush=True)
    return rows


def curve(folder: Path) -> list[dict]:
    lines = (folder / "validation.jsonl").read_text().splitlines()
    return [{"step": r["step"], "map": r["mean"]["v_rand"], "cells": r["mean"]["cells_v_rand"]}
            for r in map(json.loads, filter(str.strip, lines))]


def fine_tune(recipe: Path, seed: int, out: Path, extra: list[str], steps: int, val_every: int, overwrite: bool) -> dict:
    vnc = STACKS["VNC"]
    split = [f"data.images={vnc['images']}", f"data.labels={vnc['labels']}", "data.fold=0", f"data.train_ratio={TUNE_RATIO}",
             f"data.pixel_size={vnc['pixel_size']}", "data.test_images=null", "train.select_by=last",
             f"train.val_every={val_every}", f"train.seed={seed}"]
    start = out / f"isbi-{seed}" / "last.safetensors"
    tuned = out / f"fine-tuned-{seed}"
    run(["--from", str(start), *split, f"train.steps={steps}"], tuned, overwrite)
    data = _split_files(out / "data")
    on_files = lambda name: ["-c", str(recipe), f"data.images={data / f'{name}.tif'}",  # noqa: E731
                             f"data.labels={data / f'{name}-labels.tif'}", "data.train_ratio=1", "data.test_images=null",
                             f"data.pixel_size={vnc['pixel_size']}", "train.select_by=last", f"train.seed={seed}", *extra]
    few = run(on_files("three"), out / f"scratch-3-{seed}", overwrite)
    few_scored = evaluate(few, data / "seventeen.tif", data / "seventeen-labels.tif", out / f"scratch-3-{seed}.json")
    # the whole stack's reference: the 17 scored sections train, the three tuning ones score
    whole = run(on_files("seventeen"), out / f"scratch-17-{seed}", overwrite)
    reference = evaluate(whole, data / "three.tif", data / "three-labels.tif", out / f"scratch-17-{seed}.json")
    result = {"fine-tuned": curve(tuned), "scratch on 3": few_scored, "scratch on 17 (scored on the 3)": reference}
    last = result["fine-tuned"][-1]
    print(f"  fine-tuned on 3, seed {seed}, step {last['step']}: map {last['map']:.4f}, cells {last['cells']:.4f}; "
          f"from scratch on 17: cells {reference['cells']:.4f}", flush=True)
    return result


def _split_files(data: Path) -> Path:
    """VNC's three tuning sections and the 17 scored ones as files (calibrated, as the stack is)."""
    vnc = STACKS["VNC"]
    tune, scored = fold_split(20, 0, TUNE_RATIO)
    images, labels = tifffile.imread(vnc["images"]), tifffile.imread(vnc["labels"])
    data.mkdir(exist_ok=True)
    for name, idx in (("seventeen", scored), ("three", tune)):
        tifffile.imwrite(data / f"{name}.tif", images[idx], imagej=True, resolution=(1 / vnc["pixel_size"],) * 2,
                         metadata={"unit": "nm", "axes": "ZYX"})
        tifffile.imwrite(data / f"{name}-labels.tif", labels[idx], photometric="minisblack")
    return data


def summary(results: list[dict]) -> None:
    """Mean +- std over seeds of every zero-shot direction, and the fine-tuning's last step."""
    for result in results:
        print(f"\n{result['recipe']} {' '.join(result['extra'])}".rstrip())
        directions = {}
        for by_seed in result["zero_shot"].values():
            for direction, scored in by_seed.items():
                directions.setdefault(direction, []).append(scored)
        for direction, rows in directions.items():
            print(f"  {direction}: map {_spread([r['map'] for r in rows])}, cells {_spread([r['cells'] for r in rows])} "
                  f"({len(rows)} seeds)")
        tuned = [r for r in result.get("fine_tune", {}).values()]
        if tuned:
            last = [r["fine-tuned"][-1] for r in tuned]
            few = [r["scratch on 3"] for r in tuned]
            whole = [r["scratch on 17 (scored on the 3)"] for r in tuned]
            print(f"  VNC fine-tuned on 3 (step {last[0]['step']}): map {_spread([r['map'] for r in last])}, "
                  f"cells {_spread([r['cells'] for r in last])}")
            print(f"  VNC from scratch on the same 3: map {_spread([r['map'] for r in few])}, cells {_spread([r['cells'] for r in few])}")
            print(f"  VNC from scratch on 17, scored on the 3: map {_spread([r['map'] for r in whole])}, "
                  f"cells {_spread([r['cells'] for r in whole])}")


def _spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f}" + (f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "isbi-cpu.yaml")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every training beyond the recipe's")
    parser.add_argument("--no-fine-tune", action="store_true", help="the zero-shot part only")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps (200: the curve in docs/transfer.md; --from now defaults to 50)")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--overwrite", action="store_true", help="train again what finished before")
    parser.add_argument("--table", nargs="+", type=Path, metavar="TRANSFER_JSON", help="print these results, run nothing")
    args = parser.parse_args()
    if args.table:
        summary([json.loads(p.read_text()) for p in args.table])
        return 0
    for stack in STACKS.values():
        if not stack["images"].exists():
            sys.exit(f"{stack['images']}: missing; this benchmark reads the stacks in ../shared/data")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"recipe": str(args.recipe), "extra": args.set, "zero_shot": {}, "fine_tune": {}}
    earlier = args.out / "transfer.json"
    if earlier.exists():  # more seeds into the same folder: the earlier seeds' results are kept
        before = json.loads(earlier.read_text())
        if (before["recipe"], before["extra"]) != (result["recipe"], result["extra"]):
            sys.exit(f"{earlier}: holds another recipe's results ({before['recipe']}); give another --out")
        result = before
    for seed in [int(s) for s in args.seeds.split(",")]:
        result["zero_shot"][str(seed)] = zero_shot(args.recipe, seed, args.out, args.set, args.overwrite)
        if not args.no_fine_tune:
            result["fine_tune"][str(seed)] = fine_tune(args.recipe, seed, args.out, args.set, args.steps, args.val_every,
                                                  args.overwrite)
        (args.out / "transfer.json").write_text(json.dumps(result, indent=1) + "\n")
    summary([result])
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
