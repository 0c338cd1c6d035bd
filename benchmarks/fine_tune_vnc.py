"""Does a fine-tune pay? A bundled model and three labelled sections of a new stack, against a
training on all the other labelled sections of that stack, both scored on sections neither saw.

    python benchmarks/fine_tune_vnc.py --out runs/ft-vnc                       # steps 50,100,200
    python benchmarks/fine_tune_vnc.py --out runs/ft-vnc --steps 50,200 --also-on-14    # and on all fourteen
    python benchmarks/fine_tune_vnc.py --out runs/ft-vnc --steps 100 --set train.lr=3e-4

The stack: VNC stack 1 (../shared/data/vnc-stack1, 20 labelled 1024 x 1024 sections, 4.6 nm,
calibrated in its file), split with the lab's rule (``fold_split(20, 0, 0.7)``) into six scored
sections and fourteen others; the first three of those fourteen are the user's.

- fine-tuned: ``unet train --from START`` on the three (its defaults, or ``--steps`` and
  ``--set``), no validation while it trains, so the time printed is what a user waits;
- the whole stack's reference: the recipe (``configs/isbi-cpu.yaml``) from scratch on all
  fourteen, the last step;
- zero-shot: START as it is; with ``--also-on-14``, START fine-tuned on all fourteen alike.

Each is scored on the six with ``unet evaluate`` (the challenge's exact V_rand of the map at its
best threshold, and of the cells, where no label chooses anything). Results go to
``--out/fine-tune-vnc.json``; finished trainings are reused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from emunet.cli import main as unet
from emunet.train.sampling import fold_split

ROOT = Path(__file__).resolve().parents[1]
VNC = ROOT.parent / "shared" / "data" / "vnc-stack1"
PIXEL_NM = 4.6


def split_files(data: Path) -> dict[str, list[int]]:
    """The six scored sections, the fourteen others and the user's three, as calibrated files."""
    others, scored = fold_split(20, 0, 0.7)
    parts = {"scored": scored, "others": others, "three": others[:3]}
    images = tifffile.imread(VNC / "stack1-volume.tif")
    labels = tifffile.imread(VNC / "stack1-labels.tif")
    data.mkdir(parents=True, exist_ok=True)
    for name, idx in parts.items():
        if (data / f"{name}-labels.tif").exists():
            continue
        tifffile.imwrite(data / f"{name}.tif", images[idx], imagej=True, resolution=(1 / PIXEL_NM,) * 2,
                         metadata={"unit": "nm", "axes": "ZYX"})
        tifffile.imwrite(data / f"{name}-labels.tif", labels[idx], photometric="minisblack")
    return parts


def on(data: Path, name: str) -> list[str]:
    return [f"data.images={data / f'{name}.tif'}", f"data.labels={data / f'{name}-labels.tif'}"]


def train(args: list[str], folder: Path, overwrite: bool) -> tuple[Path, float | None]:
    """``unet train ARGS --out folder`` unless it finished before; its last weights and seconds."""
    last = folder / "last.safetensors"
    if last.exists() and not overwrite:
        return last, None
    start = time.perf_counter()
    if unet(["train", *args, "--out", str(folder), "-q", "--overwrite"]) != 0:
        sys.exit(f"training into {folder} failed")
    seconds = time.perf_counter() - start
    print(f"  trained {folder.name} in {seconds:.0f} s", flush=True)
    return last, seconds


def score(checkpoint: Path | str, data: Path, out: Path) -> dict:
    if unet(["evaluate", str(checkpoint), "--images", str(data / "scored.tif"), "--labels",
             str(data / "scored-labels.tif"), "--json", str(out), "-q"]) != 0:
        sys.exit(f"evaluating {checkpoint} failed")
    mean = json.loads(out.read_text())["mean"]
    return {"map": round(mean["v_rand"], 4), "cells": round(mean["cells_v_rand"], 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ft-vnc"))
    parser.add_argument("--start", default="isbi-membranes", help="the model fine-tuned (a bundled name or a checkpoint)")
    parser.add_argument("--steps", default="", help="fine-tuning step counts to try, comma-separated (default: --from's own)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="fine-tuning settings beyond --from's")
    parser.add_argument("--recipe", type=Path, default=ROOT / "configs" / "isbi-cpu.yaml", help="the reference's recipe")
    parser.add_argument("--no-reference", action="store_true", help="skip the training on the fourteen")
    parser.add_argument("--also-on-14", action="store_true", help="fine-tune on all fourteen too, with the same steps")
    parser.add_argument("--overwrite", action="store_true", help="train again what finished before")
    args = parser.parse_args()
    if not (VNC / "stack1-volume.tif").exists():
        sys.exit(f"{VNC}: missing; this benchmark reads VNC stack 1 in ../shared/data")
    data = args.out / "data"
    parts = split_files(data)
    print(f"scored sections {parts['scored']}; the user's three {parts['three']}", flush=True)
    results_file = args.out / "fine-tune-vnc.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"split": parts, "runs": {}}

    def keep(name: str, row: dict) -> None:
        results["runs"][name] = row
        print(f"  {name}: map {row['map']:.4f}, cells {row['cells']:.4f}", flush=True)
        results_file.write_text(json.dumps(results, indent=1) + "\n")

    keep(f"{args.start} zero-shot", score(args.start, data, args.out / "zero-shot.json"))
    tag = "_".join(s.replace("train.", "").replace("=", "") for s in args.set)
    for steps in [s for s in args.steps.split(",") if s] or [None]:
        for sections in ("three", "others") if args.also_on_14 else ("three",):
            name = ("fine-tuned" + ("" if sections == "three" else "-on-14") + (f"-{steps}" if steps else "")
                    + (f"-{tag}" if tag else ""))
            extra = [f"train.steps={steps}"] if steps else []
            model, seconds = train(["--from", args.start, *on(data, sections), "train.val_every=0", *extra, *args.set],
                                   args.out / name, args.overwrite)
            row = score(model, data, args.out / f"{name}.json")
            keep(name, {**row, "seconds": round(seconds) if seconds else results["runs"].get(name, {}).get("seconds")})
    if not args.no_reference:
        model, seconds = train(["-c", str(args.recipe), *on(data, "others"), "data.train_ratio=1", "data.test_images=null",
                                "train.select_by=last"], args.out / "scratch-14", args.overwrite)
        row = score(model, data, args.out / "scratch-14.json")
        keep("scratch on 14", {**row, "seconds": round(seconds) if seconds else results["runs"].get("scratch on 14", {}).get("seconds")})
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
