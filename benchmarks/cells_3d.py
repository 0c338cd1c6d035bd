"""Cells in 3-D on a labelled serial-section stack: 3-D variation of information of the linked cells.

The stack's labels are 2-D (255 = cell interior, 0 = membrane; no 3-D ids), so the truth's objects
are made the same way as the prediction's: each section's connected interior regions, linked to
the next section's by the same overlap rule (emunet.infer.link). Scored on the truth's interior
pixels with scikit-image's variation_of_information: split = H(cells | truth), merge =
H(truth | cells), in bits; lower is better. "per section" is the same cells unlinked (every
section's ids distinct), which is what 2-D cells are as 3-D objects.

    python benchmarks/cells_3d.py                       # the bundled models on vnc-stack1
    python benchmarks/cells_3d.py --models runs/x/best.safetensors --min-iou 0.2 0.3 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import variation_of_information

from emunet.infer.link import DEFAULT_MIN_IOU, link_sections
from emunet.infer.predictor import Predictor
from emunet.io.data import read_images

VNC = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc-stack1"


def truth_cells(labels: np.ndarray) -> np.ndarray:
    """Each section's connected interior regions (4-connected), ids per section."""
    return np.stack([ndimage.label(page > 0.5)[0] for page in labels]).astype(np.uint32)


def unlinked(cells: np.ndarray) -> np.ndarray:
    """Per-section ids made distinct across the stack (each 2-D cell its own 3-D object)."""
    offsets = np.cumsum([0] + [int(page.max()) for page in cells[:-1]]).astype(np.uint64)
    return np.where(cells > 0, cells.astype(np.uint64) + offsets[:, None, None], 0)


def vi(truth: np.ndarray, cells: np.ndarray) -> dict[str, float]:
    inside = truth > 0
    split, merge = variation_of_information(truth[inside], cells[inside])  # H(cells | truth), H(truth | cells)
    return {"split": round(float(split), 4), "merge": round(float(merge), 4), "vi": round(float(split + merge), 4)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["isbi-cells", "isbi-membranes"])
    parser.add_argument("--images", default=str(VNC / "stack1-volume.tif"))
    parser.add_argument("--labels", default=str(VNC / "stack1-labels.tif"))
    parser.add_argument("--min-iou", type=float, nargs="+", default=[DEFAULT_MIN_IOU],
                        help="the prediction's linking thresholds to score (the truth is linked at the default)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    truth_2d = truth_cells(read_images(args.labels).images)
    truth = link_sections(truth_2d)
    rows = {"cpu": cpu_name(), "truth_objects": int(truth.max()), "truth_cells_2d": int(truth_2d.reshape(len(truth_2d), -1).max(1).sum()),
            "models": {}}
    print(f"{args.labels}: {rows['truth_cells_2d']} 2-D cells, {rows['truth_objects']} objects linked at IoU {DEFAULT_MIN_IOU} ({rows['cpu']})")
    for model in args.models:
        predictor = Predictor.load(model)
        predictor.segment = dataclasses.replace(predictor.segment, link_sections=False)
        start = time.perf_counter()
        cells = predictor.cells_of(predictor.predict(predictor.read(args.images)))
        row = {"predict_and_cut_s": round(time.perf_counter() - start, 1), "per_section": vi(truth, unlinked(cells))}
        print(f"{model}: per section   {row['per_section']}  ({row['predict_and_cut_s']} s to predict and cut)")
        for min_iou in args.min_iou:
            start = time.perf_counter()
            linked = link_sections(cells, min_iou)
            row[f"linked_{min_iou}"] = {**vi(truth, linked), "objects": int(linked.max()), "link_s": round(time.perf_counter() - start, 1)}
            print(f"{model}: linked at {min_iou}  {row[f'linked_{min_iou}']}")
        rows["models"][model] = row
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
