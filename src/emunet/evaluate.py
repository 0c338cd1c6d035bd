"""Score a model on labelled slices: per-slice scores, their mean, a table and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tqdm import tqdm

from .config import PredictConfig
from .data import Volume
from .metrics import SCORE_NAMES, slice_scores
from .model import UNet
from .tiling import predict_image

__all__ = ["predict_volume", "score_volume", "format_table", "write_json"]


def predict_volume(
    model: UNet, volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False
) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 of every slice, by overlap-tile prediction."""
    was_training = model.training
    model.eval()
    out = np.empty(volume.images.shape, np.float32)
    slices = tqdm(range(len(volume)), desc="predict", unit="slice", leave=False, disable=not progress)
    for i in slices:
        out[i] = predict_image(
            model, volume.images[i], tile=pcfg.tile, overlap=pcfg.overlap, batch_size=pcfg.batch_size,
            blend=pcfg.blend, margin=pcfg.margin, precision=precision,
        )
    model.train(was_training)
    return out


def score_volume(
    model: UNet, volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False
) -> tuple[dict[str, float], list[dict]]:
    """Mean scores over slices (the lab averages its dice per slice) and the per-slice rows."""
    if volume.labels is None:
        raise ValueError(f"{volume.source}: scoring needs labels")
    probs = predict_volume(model, volume, pcfg, precision, progress)
    rows = [{"slice": name, **slice_scores(p, y)} for name, p, y in zip(volume.names, probs, volume.labels)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_NAMES}
    return mean, rows


def format_table(mean: dict[str, float], rows: list[dict]) -> str:
    """A plain-text table: one line per slice and the mean."""
    head = f"{'slice':<24}" + "".join(f"{k:>15}" for k in SCORE_NAMES)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{str(r['slice']):<24}" + "".join(f"{r[k]:>15.4f}" for k in SCORE_NAMES))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<24}" + "".join(f"{mean[k]:>15.4f}" for k in SCORE_NAMES))
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2) + "\n").encode())


