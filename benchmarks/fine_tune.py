"""What fine-tuning buys on a stack unlike the training data.

The stack: fold 1's six ISBI slices, which the starting model never saw (it is trained on the
other 24), under another microscope's look: gamma, blur, Poisson noise and another pixel size.
Three of them train, the other three score (the challenge's V_rand, exact, of the map and of the
cells), every ``--val-every`` steps, for two runs on the same three slices:

- fine-tuned: ``unet train --from START`` (the starting model's settings, lr 1e-4, constant);
- from scratch: the CPU preset's recipe (``configs/isbi-cpu.yaml``) on the three slices.

    python benchmarks/fine_tune.py --out runs/fine-tune                   # trains the start (24 slices) first
    python benchmarks/fine_tune.py --start runs/fold1/last.safetensors --out runs/fine-tune --seeds 1,2

Writes ``curves.json`` and ``curves.png`` (V_rand over steps; step 0 of fine-tuning = the
starting model as it is, zero-shot) into ``--out``. Several benchmarks' curves in one picture:

    python benchmarks/fine_tune.py --plot runs/fine-tune/curves.json "from isbi-robust=runs/ft-robust/curves.json" \
        --out docs/fine-tune.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from emunet.cli import main as unet
from emunet.train.sampling import fold_split

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def another_microscope(images: np.ndarray, masks: np.ndarray, gamma: float, blur: float, electrons: float, scale: float,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The slices as another microscope shows them: resized by ``scale`` (another pixel size),
    contrast bent by ``gamma``, blurred (std ``blur`` px) and with the shot noise of
    ``electrons`` per pixel; the masks resized alike (nearest)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    h, w = images.shape[-2:]
    shape = (round(h * scale), round(w * scale))
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        grey = resize(image / 255.0, shape, order=1, anti_aliasing=scale < 1)
        grey = gaussian_filter(grey ** gamma, blur)
        grey = rng.poisson(grey * electrons) / electrons
        out_images.append(np.clip(grey * 255, 0, 255).round().astype(np.uint8))
        out_masks.append(resize(mask, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8))
    return np.stack(out_images), np.stack(out_masks)


def curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "v_rand": r["mean"]["v_rand"], "cells_v_rand": r["mean"]["cells_v_rand"]} for r in rows]


def zero_shot(start: str, data: dict, out: Path, split_args: list[str]) -> dict:
    """The starting model on the three scored slices, as it is (step 0 of fine-tuning)."""
    images = tifffile.imread(data["images"])
    masks = tifffile.imread(data["labels"])
    scored = fold_split(len(images), 0, 0.5)[1]
    tifffile.imwrite(out / "scored.tif", images[scored], photometric="minisblack")
    tifffile.imwrite(out / "scored-masks.tif", masks[scored], photometric="minisblack")
    assert unet(["evaluate", start, "--images", str(out / "scored.tif"), "--labels", str(out / "scored-masks.tif"),
                 "--json", str(out / "zero-shot.json"), "-q"]) == 0
    record = json.loads((out / "zero-shot.json").read_text())
    return {"step": 0, "v_rand": record["mean"]["v_rand"], "cells_v_rand": record["mean"]["cells_v_rand"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", help="the starting model (default: trained here on fold 1's 24 training slices)")
    parser.add_argument("--out", type=Path, default=Path("runs/fine-tune"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--gamma", type=float, default=1.6)
    parser.add_argument("--blur", type=float, default=1.5)
    parser.add_argument("--electrons", type=float, default=20.0)
    parser.add_argument("--scale", type=float, default=4 / 4.6, help="4 nm pixels shown at 4.6 nm")
    parser.add_argument("--tune", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of the fine-tuned run beyond --from's (e.g. train.lr=1e-3 train.schedule=cosine)")
    parser.add_argument("--no-scratch", action="store_true", help="only the fine-tuned runs")
    parser.add_argument("--plot", nargs="+", metavar="[LABEL=]CURVES_JSON",
                        help="draw these benchmarks' curves into the picture --out names, and run nothing")
    args = parser.parse_args()
    if args.plot:
        plot(merged(args.plot), args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    start = args.start
    if start is None:  # fold 1's 24 training slices; the last step, so the six chose nothing
        assert unet(["train", "-c", str(CONFIGS / "isbi-cpu.yaml"), "--out", str(args.out / "start"), "-q", "--overwrite",
                     "train.select_by=last", "data.test_images=null", "train.val_every=600"]) == 0
        start = str(args.out / "start" / "last.safetensors")
    six = fold_split(30, 1)[1]
    images, masks = another_microscope(tifffile.imread(ISBI / "train-volume.tif")[six],
                                       tifffile.imread(ISBI / "train-labels.tif")[six],
                                       args.gamma, args.blur, args.electrons, args.scale)
    data = {"images": args.out / "shifted.tif", "labels": args.out / "shifted-masks.tif"}
    tifffile.imwrite(data["images"], images, photometric="minisblack")
    tifffile.imwrite(data["labels"], masks, photometric="minisblack")
    # the six split 3 / 3 (data.fold=0, data.train_ratio=0.5): three train, three score
    common = [f"data.images={data['images']}", f"data.labels={data['labels']}", "data.fold=0", "data.train_ratio=0.5",
              f"train.steps={args.steps}", f"train.val_every={args.val_every}", "train.select_by=last"]
    results = {"start": start, "shift": vars(args) | {"out": str(args.out)}, "zero_shot": zero_shot(start, data, args.out, common),
               "runs": {}}
    results["shift"].pop("start")
    for seed in [int(s) for s in args.seeds.split(",")]:
        tuned, scratch = args.out / f"fine-tuned-{seed}", args.out / f"scratch-{seed}"
        assert unet(["train", "--from", start, "--out", str(tuned), *common, *args.tune, f"train.seed={seed}", "-q",
                     "--overwrite"]) == 0
        results["runs"][seed] = {"fine-tuned": curve(tuned)}
        if not args.no_scratch:
            assert unet(["train", "-c", str(CONFIGS / "isbi-cpu.yaml"), "--out", str(scratch), *common, f"train.seed={seed}",
                         "data.test_images=null", "-q", "--overwrite"]) == 0
            results["runs"][seed]["scratch"] = curve(scratch)
    (args.out / "curves.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "curves.png")
    table(results)
    return 0


def merged(files: list[str]) -> dict:
    """Several benchmarks' curves as one: each fine-tuning named with its file's label (its
    starting model), if given, and drawn from its own zero-shot point."""
    out: dict = {"zero_shot": {}, "runs": {}}
    for item in files:
        label, _, path = item.rpartition("=")
        results = json.loads(Path(path).read_text())
        for seed, runs in results["runs"].items():
            for name, points in runs.items():
                named = f"{name} {label}".strip() if name == "fine-tuned" else name  # scratch starts from nothing
                out["runs"].setdefault(seed, {})[named] = points
                if name == "fine-tuned":
                    out["zero_shot"][named] = results["zero_shot"]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "v_rand", "map"), (axes[1], "cells_v_rand", "cells")):
        names = sorted({name for runs in results["runs"].values() for name in runs})
        colours = dict(zip(names, ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"]))
        for seed, runs in results["runs"].items():
            for name, points in runs.items():
                zero = results["zero_shot"].get(name) if "step" not in results["zero_shot"] else results["zero_shot"]
                points = ([zero] if name.startswith("fine-tuned") and zero else []) + points
                ax.plot([p["step"] for p in points], [p[key] for p in points], color=colours[name], marker=".",
                        label=f"{name} (seed {seed})")
        ax.set_title(f"V_rand of the {title}, 3 scored slices")
        ax.set_xlabel("training step (3 slices)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("V_rand (challenge, exact)")
    axes[1].legend(loc="lower right")
    fig.suptitle("Fold 1's slices under another microscope's look: fine-tuned from a model of the other 24, or from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> None:
    print("| run | step | V_rand (map) | V_rand (cells) |\n|---|---|---|---|")
    z = results["zero_shot"]
    print(f"| starting model, zero-shot | 0 | {z['v_rand']:.4f} | {z['cells_v_rand']:.4f} |")
    for seed, runs in results["runs"].items():
        for name, points in runs.items():
            for p in [points[len(points) // 4 - 1], points[-1]] if len(points) >= 4 else points[-1:]:
                print(f"| {name}, seed {seed} | {p['step']} | {p['v_rand']:.4f} | {p['cells_v_rand']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
