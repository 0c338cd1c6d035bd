"""Put trained models into the package as bundled models (src/emunet/model/bundled/).

    python scripts/bundle_models.py isbi-membranes runs/isbi-membranes \
        --scores "five folds (unet cv -c configs/isbi-cpu.yaml train.select_by=last)=runs/cv/cv.json"

Each run folder's last.safetensors is copied with its run settings, and models.json
gets the model's description and the recipe's held-out scores, read from the eval.json or
cv.json files given (each labelled with how it was measured).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save

from emunet.io.files import atomic_write_bytes, write_json
from emunet.model.bundled import BUNDLED_DIR
from emunet.model.checkpoint import load_model

ISBI_TERMS = ("ISBI 2012 challenge data (Cardona et al. 2010, PLoS Biol 8:e1000502; Arganda-Carreras et al. 2015): "
              "free for non-commercial image-segmentation work, cite both when you publish")
ISBI = "ISBI 2012 training volume, all 30 labelled slices (ssTEM of a Drosophila L1 ventral nerve cord, 4 x 4 x 50 nm)"
DESCRIPTIONS = {
    "isbi-membranes": dict(head="membrane", trained_on=ISBI, pixel_size_nm=4.0, data_terms=ISBI_TERMS,
                           summary="membrane probabilities (1 = cell interior); cells by seeded watershed",
                           recipe="unet train -c configs/models/isbi-membranes.yaml (the main job's recipe, 600 steps)"),
    "isbi-cells": dict(head="affinities", trained_on=ISBI, pixel_size_nm=4.0, data_terms=ISBI_TERMS,
                       summary="affinities; cells by the mutex watershed (the better cells)",
                       recipe="unet train -c configs/models/isbi-cells.yaml (the affinity recipe, 1600 steps)"),
}


def bundled_weights(run: Path, name: str) -> bytes:
    """The run's last weights as they are (fp32: half precision moved some probabilities by
    0.07, too much to call the same model), with its metadata and its bundled name."""
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata["bundled"] = json.dumps(name)
    return save(tensors, metadata=metadata)


def scores(given: list[str]) -> dict:
    out = {}
    for item in given:
        label, _, path = item.rpartition("=")
        if not Path(path).is_file():  # a figure measured elsewhere, given as text with its source
            out[label] = path
            continue
        record = json.loads(Path(path).read_text())
        mean = record.get("mean", {})
        spread = record.get("std", {})
        parts = [f"{key} {mean[key]:.4f}" + (f" +- {spread[key]:.4f}" if key in spread else "")
                 for key in ("v_rand", "v_info", "cells_v_rand", "lab_dice") if key in mean]
        out[label] = ", ".join(parts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(DESCRIPTIONS))
    parser.add_argument("run", type=Path, help="the run folder (its last.safetensors)")
    parser.add_argument("--scores", action="append", default=[], metavar="LABEL=JSON",
                        help="held-out scores of the recipe: an eval.json or cv.json (or the figures as text), labelled "
                        "with how they were measured")
    args = parser.parse_args()
    data = bundled_weights(args.run, args.name)
    BUNDLED_DIR.mkdir(exist_ok=True)
    atomic_write_bytes(BUNDLED_DIR / f"{args.name}.safetensors", data)
    load_model(BUNDLED_DIR / f"{args.name}.safetensors")  # it loads
    index = BUNDLED_DIR / "models.json"
    entries = [e for e in (json.loads(index.read_text()) if index.exists() else []) if e["name"] != args.name]
    entries.append({"name": args.name, "file": f"{args.name}.safetensors", **DESCRIPTIONS[args.name],
                    "scores": scores(args.scores)})
    write_json(index, sorted(entries, key=lambda e: e["name"]))
    print(f"{args.name}: {len(data) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
