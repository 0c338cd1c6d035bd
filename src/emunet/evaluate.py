"""Score a model on labelled slices: per-slice scores, their mean, a table and a JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .challenge import score_stack
from .config import PredictConfig
from .data import Volume
from .metrics import SCORE_NAMES, slice_scores
from .model import UNet
from .postprocess import close_gaps_in_place, smooth_in_place
from .tiling import model_context, predict_image, predict_image_tta

__all__ = ["predict_volume", "score_probabilities", "score_volume", "format_table", "write_json", "read_maps", "pick_slices",
           "format_sweep"]


def predict_volume(
    model: UNet | Sequence[UNet], volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False
) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 of every slice, by overlap-tile prediction
    (smoothed by ``pcfg.smooth``, then walls closed by ``pcfg.close_gaps``).

    Given several models (an ensemble, e.g. runs with different seeds or folds), the result is
    the mean of their probabilities: independently trained models disagree on the ambiguous
    membranes, and the average is steadier than any one of them (README, Results). That costs
    one more slice-sized buffer.
    """
    models = [model] if isinstance(model, UNet) else list(model)
    if not models:
        raise ValueError("predict_volume needs at least one model")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    out = np.empty(volume.images.shape, np.float32)
    extra = np.empty(volume.images.shape[1:], np.float32) if len(models) > 1 else None
    slices = tqdm(range(len(volume)), desc="predict", unit="slice", leave=False, disable=not progress)
    settings = dict(tile=pcfg.tile, overlap=pcfg.overlap, batch_size=pcfg.batch_size, blend=pcfg.blend,
                    margin=pcfg.margin, precision=precision)
    for i in slices:
        for k, m in enumerate(models):
            target = out[i] if k == 0 else extra
            planes = volume.planes(i, model_context(m))
            if pcfg.tta:
                target[...] = predict_image_tta(m, planes, **settings)
            else:
                predict_image(m, planes, out=target, progress=progress, **settings)  # no second copy
            if k:
                out[i] += extra
        if len(models) > 1:
            out[i] /= len(models)
        smooth_in_place(out[i], pcfg.smooth)
        close_gaps_in_place(out[i], pcfg.close_gaps)
    for m, mode in zip(models, modes):
        m.train(mode)
    return out


CHALLENGE_NAMES = ("v_rand", "v_info")


def score_probabilities(probs: np.ndarray, volume: Volume, challenge: bool = True) -> dict:
    """Scores of predicted probabilities against ``volume.labels``.

    Returns a report: ``mean`` (lab dice, membrane dice and IoU, pixel error at 0.5, averaged
    per slice as the lab does; with ``challenge`` also the stack's V_rand and V_info at their
    best thresholds), ``slices`` (one row per slice) and ``challenge`` (the full sweep).
    """
    if volume.labels is None:
        raise ValueError(f"{volume.source}: scoring needs labels")
    rows = [{"slice": name, **slice_scores(p, y)} for name, p, y in zip(volume.names, probs, volume.labels)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_NAMES}
    report: dict = {"mean": mean, "slices": rows}
    if challenge:
        result = score_stack(probs, volume.labels)
        for row, at_best in zip(rows, result["slices_at_best"]):
            row.update({k: at_best[k] for k in CHALLENGE_NAMES})
        mean.update({k: result[k] for k in CHALLENGE_NAMES})
        report["challenge"] = {k: v for k, v in result.items() if k != "slices_at_best"}
    return report


def score_volume(
    model: UNet | Sequence[UNet], volume: Volume, pcfg: PredictConfig, precision: str = "fp32", progress: bool = False, challenge: bool = True
) -> dict:
    """Predict every slice of a labelled volume (by one model or the mean of several) and score
    it (see :func:`score_probabilities`)."""
    probs = predict_volume(model, volume, pcfg, precision, progress)
    return score_probabilities(probs, volume, challenge)


def format_table(report: dict) -> str:
    """A plain-text table: one line per slice, the mean, and the challenge scores' thresholds."""
    mean, rows = report["mean"], report["slices"]
    names = [k for k in (*SCORE_NAMES, *CHALLENGE_NAMES) if k in mean]
    head = f"{'slice':<24}" + "".join(f"{k:>15}" for k in names)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{str(r['slice']):<24}" + "".join(f"{r[k]:>15.4f}" for k in names))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<24}" + "".join(f"{mean[k]:>15.4f}" for k in names))
    if "challenge" in report:
        c = report["challenge"]
        lines.append(
            f"challenge (stack, best threshold): V_rand {c['v_rand']:.4f} (split {c['v_rand_split']:.4f}, merge "
            f"{c['v_rand_merge']:.4f}, th {c['v_rand_threshold']:.1f}); V_info {c['v_info']:.4f} (split "
            f"{c['v_info_split']:.4f}, merge {c['v_info_merge']:.4f}, th {c['v_info_threshold']:.1f}); "
            f"pixel error {c['pixel_error']:.4f} (th {c['pixel_threshold']:.1f})"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2) + "\n").encode())




# --- scoring maps made elsewhere (``unet score``): no model involved ------------------------
def read_maps(path: str | Path, segmentation: bool = False) -> tuple[np.ndarray, list[str]]:
    """Probability maps (float32 in [0, 1], 1 = cell interior) or, with ``segmentation``, label
    images (int64, each id > 0 a cell, 0 = boundary) from a stack, an image or a folder.

    8- and 16-bit maps are read as probabilities scaled by their type's maximum (a 0/255 binary
    map scores the same at every threshold); float maps must already lie in [0, 1].
    """
    from .data import DataError, _read_raw

    slices, names = _read_raw(Path(path))
    if len({s.shape for s in slices}) > 1:
        raise DataError(f"{path}: maps differ in size; score maps of one size together")
    stack = np.stack(slices)
    if segmentation:
        if stack.dtype.kind not in "biu":
            raise DataError(f"{path}: a label image must hold integer ids, got {stack.dtype}")
        if stack.min() < 0:
            raise DataError(f"{path}: a label image must hold ids >= 0 (0 = boundary), found {int(stack.min())}")
        return stack.astype(np.int64), names
    if stack.dtype == np.bool_:
        return stack.astype(np.float32), names
    if stack.dtype in (np.uint8, np.uint16):
        return (stack * np.float32(1.0 / np.iinfo(stack.dtype).max)).astype(np.float32), names
    if stack.dtype.kind != "f":
        raise DataError(f"{path}: {stack.dtype} values look like a label image; pass --segmentation to score it as one")
    if not np.isfinite(stack).all() or stack.min() < 0 or stack.max() > 1:
        raise DataError(f"{path}: probabilities must be finite and lie in [0, 1] (1 = cell interior); "
                        f"found {float(np.nanmin(stack)):.4g}..{float(np.nanmax(stack)):.4g}")
    return stack.astype(np.float32), names


def pick_slices(maps: np.ndarray, labels: np.ndarray, slices: list[int] | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Restrict labels (and maps of the same length) to ``slices``; maps that already hold
    exactly the chosen slices are kept as they are."""
    from .data import DataError

    if slices is None:
        if len(maps) != len(labels):
            raise DataError(f"{source}: {len(maps)} maps for {len(labels)} label slices; choose the slices with --slices")
        return maps, labels
    bad = [i for i in slices if not 0 <= i < len(labels)]
    if bad:
        raise DataError(f"--slices: slice {bad[0]} is out of range 0..{len(labels) - 1} of the labels")
    if len(maps) == len(labels):
        return maps[slices], labels[slices]
    if len(maps) == len(slices):
        return maps, labels[slices]
    raise DataError(f"{source}: {len(maps)} maps match neither the {len(labels)} label slices nor the {len(slices)} chosen")


def format_sweep(result: dict, names: Sequence[str]) -> str:
    """The challenge's numbers as a table: each threshold's V_rand (pooled split, merge) and
    V_info, the per-slice scores at the best thresholds, and the two maxima."""
    lines = [f"{'threshold':>18} {'V_rand':>8} {'split':>8} {'merge':>8} {'V_info':>8}"]
    for row in result["by_threshold"]:
        th = "label image" if row["threshold"] is None else repr(row["threshold"])
        lines.append(f"{th:>18} {row['v_rand']:8.4f} {row['v_rand_split']:8.4f} {row['v_rand_merge']:8.4f} {row['v_info']:8.4f}")
    lines.append("")
    lines.append(f"{'slice':<24} {'V_rand':>8} {'V_info':>8}")
    for name, row in zip(names, result["slices_at_best"]):
        lines.append(f"{str(name):<24} {row['v_rand']:8.4f} {row['v_info']:8.4f}")
    at = "" if "v_rand_threshold" not in result else f" at threshold {result['v_rand_threshold']:.1f}"
    at_info = "" if "v_info_threshold" not in result else f" at threshold {result['v_info_threshold']:.1f}"
    lines.append("")
    lines.append(f"Maximal V_rand after thinning: {result['v_rand']:.6f}{at} "
                 f"(split {result['v_rand_split']:.4f}, merge {result['v_rand_merge']:.4f})")
    lines.append(f"Maximal V_info after thinning: {result['v_info']:.6f}{at_info} "
                 f"(split {result['v_info_split']:.4f}, merge {result['v_info_merge']:.4f})")
    return "\n".join(lines)
