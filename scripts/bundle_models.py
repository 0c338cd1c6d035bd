"""Put trained models into the package as bundled models (src/emunet/model/bundled/).

    python scripts/bundle_models.py isbi-membranes runs/isbi-membranes \
        --scores "five folds (unet cv -c configs/isbi-cpu.yaml train.select_by=last)=runs/cv/cv.json"

    python scripts/bundle_models.py isbi-membranes src/emunet/model/bundled/isbi-membranes.safetensors \
        --segment seed_threshold=0.5      # a shipped model's cell settings, weights unchanged
    python scripts/bundle_models.py sstem-membranes runs/sstem-membranes --segment seed_dynamics=0.2 --scores ...

Each run folder's last.safetensors is copied with its run settings, and models.json
gets the model's description and the recipe's held-out scores, read from the eval.json or
cv.json files given (each labelled with how it was measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load as load_bytes, save

from emunet.config import SegmentConfig
from emunet.io.files import atomic_write_bytes, write_json
from emunet.model.bundled import BUNDLED_DIR
from emunet.model.checkpoint import load

ISBI_TERMS = ("ISBI 2012 challenge data (Cardona et al. 2010, PLoS Biol 8:e1000502; Arganda-Carreras et al. 2015): "
              "free for non-commercial image-segmentation work, cite both when you publish")
ISBI = "ISBI 2012 training volume, all 30 labelled slices (ssTEM of a Drosophila L1 ventral nerve cord, 4 x 4 x 50 nm)"
VNC_TERMS = ("VNC stack 1 (Gerhard et al. 2013, doi:10.6084/m9.figshare.856713): CC BY-NC-SA 3.0, non-commercial, "
             "cite it when you publish; a model trained on it, and its fine-tunes, carry these terms")
TWO_STACKS = ("two labs' ssTEM of Drosophila larva ventral nerve cords: ISBI 2012, 24 of its 30 labelled slices (L1, 4 x 4 x 50 "
              "nm), and VNC stack 1, 14 of its 20 labelled sections (L3, another lab and microscope, 4.6 nm resampled to 4); "
              "ISBI's fold-1 slices 4, 6, 7, 9, 18, 19 and VNC's sections 0, 3, 11, 12, 15, 16 held out for its scores")
# the order of `unet models` and of napari's model list (its first is the widget's default):
# the models trained on two stacks first, as the ones to start from on a stack of your own, the
# membrane model first: its cells hold best under shot noise, the likeliest look of another
# microscope, and it predicts twice as fast (docs/transfer.md)
DESCRIPTIONS = {
    "sstem-membranes": dict(head="membrane", trained_on=TWO_STACKS, pixel_size_nm=4.0,
                            data_terms=f"{ISBI_TERMS}; {VNC_TERMS}",
                            summary="membrane probabilities (1 = cell interior); cells by seeded watershed (start here for a stack of your own)",
                            recipe="python scripts/two_stacks.py runs/two-stacks --isbi-copies 3 --hold-out; "
                                   "unet train -c configs/models/sstem-membranes.yaml (1200 steps)"),
    "sstem-cells": dict(head="affinities", trained_on=TWO_STACKS, pixel_size_nm=4.0, data_terms=f"{ISBI_TERMS}; {VNC_TERMS}",
                        summary="affinities; cells by the mutex watershed (the better cells on ssTEM; half the speed)",
                        recipe="python scripts/two_stacks.py runs/two-stacks --isbi-copies 3 --hold-out; "
                               "unet train -c configs/models/sstem-cells.yaml (1600 steps)"),
    "isbi-membranes": dict(head="membrane", trained_on=ISBI, pixel_size_nm=4.0, data_terms=ISBI_TERMS,
                           summary="membrane probabilities (1 = cell interior); cells by seeded watershed",
                           recipe="unet train -c configs/models/isbi-membranes.yaml (the main job's recipe, 600 steps)"),
    "isbi-cells": dict(head="affinities", trained_on=ISBI, pixel_size_nm=4.0, data_terms=ISBI_TERMS,
                       summary="affinities; cells by the mutex watershed (the better cells)",
                       recipe="unet train -c configs/models/isbi-cells.yaml (the affinity recipe, 1600 steps)"),
}


def bundled_weights(run: Path, name: str, segment: list[str] = ()) -> bytes:
    """The run's last weights as they are (fp32: half precision moved some probabilities by
    0.07, too much to call the same model), with its metadata and its bundled name; ``segment``
    (KEY=VALUE) changes how its cells are cut, written into its run settings."""
    source = run if run.suffix == ".safetensors" else run / "last.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in sorted(f.keys())}
    metadata["bundled"] = json.dumps(name)
    if segment:
        config = json.loads(metadata["config"])
        known = [f.name for f in dataclasses.fields(SegmentConfig)]  # newer settings than the run's, too
        for item in segment:
            key, _, value = item.partition("=")
            if key not in known:
                raise SystemExit(f"--segment {item}: no such setting; known: {', '.join(known)}")
            default = getattr(SegmentConfig(), key)
            config["segment"][key] = type(default)(float(value))
        metadata["config"] = json.dumps(config)
    return save(tensors, metadata=metadata)


def same_content(old: bytes, new: bytes) -> bool:
    """Whether two safetensors files hold the same tensors and metadata (a rewrite of the same
    model would only churn the repository)."""
    a, b = load_bytes(old), load_bytes(new)
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in a) \
        and _metadata(old) == _metadata(new)


def _metadata(data: bytes) -> dict:
    header = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header]).get("__metadata__", {})


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
    parser.add_argument("run", type=Path, help="the run folder (its last.safetensors), or a .safetensors file (a bundled "
                        "model's own, to change its --segment settings)")
    parser.add_argument("--segment", action="append", default=[], metavar="KEY=VALUE",
                        help="a segment.* setting of the bundled copy (how its cells are cut), e.g. bias=0.4")
    parser.add_argument("--scores", action="append", default=[], metavar="LABEL=JSON",
                        help="held-out scores of the recipe: an eval.json or cv.json (or the figures as text), labelled "
                        "with how they were measured")
    args = parser.parse_args()
    data = bundled_weights(args.run, args.name, args.segment)
    BUNDLED_DIR.mkdir(exist_ok=True)
    target = BUNDLED_DIR / f"{args.name}.safetensors"
    if not (target.exists() and same_content(target.read_bytes(), data)):  # safetensors orders its header anew each time
        atomic_write_bytes(target, data)
    load(BUNDLED_DIR / f"{args.name}.safetensors")  # it loads
    index = BUNDLED_DIR / "models.json"
    before = json.loads(index.read_text()) if index.exists() else []
    kept = {e["name"]: e.get("scores", {}) for e in before}.get(args.name, {})
    entries = [e for e in before if e["name"] != args.name]
    entries.append({"name": args.name, "file": f"{args.name}.safetensors", **DESCRIPTIONS[args.name],
                    "scores": scores(args.scores) if args.scores else kept})  # no --scores: the figures it had
    order = list(DESCRIPTIONS)
    write_json(index, sorted(entries, key=lambda e: order.index(e["name"]) if e["name"] in order else len(order)))
    print(f"{args.name}: {len(data) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
