"""Scoring: probability maps against labels, as per-slice scores, their means and the
challenge's sweep; one report type, one table, one ``eval.json`` layout for every command."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .challenge import score_segmentation_stack, score_stack
from ..io.data import Volume
from ..errors import DataError
from ..io.files import write_json
from .metrics import SCORE_NAMES, slice_scores

log = logging.getLogger("emunet")

if TYPE_CHECKING:
    from ..infer.predict import Prediction
    from ..infer.segment import SegmentConfig

__all__ = ["CHALLENGE_NAMES", "CELL_NAMES", "ScoreReport", "score_probabilities", "score_prediction", "format_table", "write_eval_json", "read_maps",
           "pick_slices", "format_sweep"]

CHALLENGE_NAMES = ("v_rand", "v_info")
CELL_NAMES = ("cells_v_rand", "cells_v_info")  # the challenge's scores of the cells (instance labels)


@dataclass
class ScoreReport:
    """Scores of a stack of probability maps.

    ``mean``: the per-slice scores averaged over slices, as the lab averages its dice
    (lab_dice, membrane_dice, membrane_iou, pixel_error_05: the share of wrong pixels at 0.5),
    plus the challenge's V_rand and V_info of the stack at their best thresholds.
    ``slices``: one row per slice (its name, the same scores; V_rand and V_info at the stack's
    V_rand threshold). ``challenge``: the whole sweep (see :func:`challenge.score_stack`), with
    ``challenge_pixel_error``, the challenge's pixel error (1 - the best pixel F-score).
    ``cells``: where the cells (label images) were scored too, the challenge's scores of them
    (no threshold: each id one cell), as ``cells_v_rand`` and ``cells_v_info`` in ``mean`` and rows.
    """

    mean: dict[str, float]
    slices: list[dict[str, Any]]
    challenge: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "slices": self.slices, "challenge": self.challenge, "cells": self.cells}


def score_probabilities(probs: np.ndarray, volume: Volume, challenge: bool = True, cells: np.ndarray | None = None
                        ) -> ScoreReport:
    """Score probabilities (1 = interior) against ``volume.labels``; ``challenge`` adds the
    challenge's sweep (a few tenths of a second per 512 px slice); ``cells``, label images
    (N, H, W) of the same slices, adds the challenge's scores of those."""
    if volume.labels is None:
        raise DataError(f"{volume.source}: scoring needs labels")
    rows = [{"slice": name, **slice_scores(p, y)} for name, p, y in zip(volume.names, probs, volume.labels)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in SCORE_NAMES}
    report = ScoreReport(mean, rows)
    if challenge:
        sweep = score_stack(probs, volume.labels)
        for row, at_best in zip(rows, sweep["slices_at_best"]):
            row.update({k: at_best[k] for k in CHALLENGE_NAMES})
        mean.update({k: sweep[k] for k in CHALLENGE_NAMES})
        report.challenge = {k: v for k, v in sweep.items() if k != "slices_at_best"}
    if cells is not None:
        scored = score_segmentation_stack(cells, volume.labels)
        for row, own in zip(rows, scored["slices_at_best"]):
            row.update({f"cells_{k}": own[k] for k in CHALLENGE_NAMES})
        mean.update({f"cells_{k}": scored[k] for k in CHALLENGE_NAMES})
        report.cells = {k: v for k, v in scored.items() if k not in ("slices_at_best", "by_threshold")}
    return report


def score_prediction(prediction: Prediction, volume: Volume, segment: SegmentConfig, warn: bool = True
                     ) -> tuple[ScoreReport, np.ndarray]:
    """A prediction's map and its cells (segmented as ``segment`` says) scored against
    ``volume.labels``; the report and the cells. ``warn=False``: no warnings about cells that
    failed (validation of a model still training, where early maps are expected to be weak)."""
    cells = prediction.cells(segment, warn)
    return score_probabilities(prediction.probs, volume, cells=cells), cells


def format_table(report: ScoreReport) -> str:
    """A plain-text table: one line per slice, the mean, and the challenge scores' thresholds."""
    names = [k for k in (*SCORE_NAMES, *CHALLENGE_NAMES, *CELL_NAMES) if k in report.mean]
    head = f"{'slice':<24}" + "".join(f"{k:>15}" for k in names)
    lines = [head, "-" * len(head)]
    for r in report.slices:
        lines.append(f"{str(r['slice']):<24}" + "".join(_num(r[k], ".4f").rjust(15) for k in names))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<24}" + "".join(_num(report.mean[k], ".4f").rjust(15) for k in names))
    if report.challenge:
        c = report.challenge
        lines.append(
            f"challenge (stack, best threshold): V_rand {_num(c['v_rand'], '.4f')} (split {_num(c['v_rand_split'], '.4f')}, merge "
            f"{_num(c['v_rand_merge'], '.4f')}, th {_num(c['v_rand_threshold'], '.1f')}); V_info {_num(c['v_info'], '.4f')} (split "
            f"{_num(c['v_info_split'], '.4f')}, merge {_num(c['v_info_merge'], '.4f')}, th {_num(c['v_info_threshold'], '.1f')}); "
            f"pixel error {_num(c['challenge_pixel_error'], '.4f')} (th {c['pixel_threshold']:.1f})"
        )
    if report.cells:
        c = report.cells
        lines.append(f"challenge (the cells, label images): V_rand {_num(c['v_rand'], '.4f')} (split {_num(c['v_rand_split'], '.4f')}, "
                     f"merge {_num(c['v_rand_merge'], '.4f')}); V_info {_num(c['v_info'], '.4f')} (split {_num(c['v_info_split'], '.4f')}, "
                     f"merge {_num(c['v_info_merge'], '.4f')})")
    return "\n".join(lines)


@dataclass(kw_only=True)
class FoldResult:
    """One trained and scored fold, the one type that training returns, the jobs pass on and the
    report draws: the best weights' validation (scores, slices, map, cells), where they are, and
    the weights themselves (loaded, eval mode) so nothing is read or scored twice. A run that
    trained on every slice (``data.train_ratio=1``) has no fold, scores, slices or maps. Built by
    keyword: a dozen fields, several of one type, are too easy to put in the wrong place."""

    run_dir: Path
    step: int
    fold: int | None = None
    report: ScoreReport | None = None
    volume: Volume | None = None  # the validation slices
    probs: np.ndarray | None = None
    cells: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    best_path: Path | None = None
    model: Any = None  # the best weights as a UNet
    precision: str = "fp32"
    chosen_by: str = ""  # how the scored weights were chosen (Config.chosen_by)


def write_eval_json(path: Path, report: ScoreReport, **context: Any) -> None:
    """``eval.json``: what was scored and how (``context``: checkpoint, step, data, fold,
    precision, seconds, ...), then the report."""
    write_json(path, {**context, **report.to_dict()})


# --- scoring maps made elsewhere (``unet score``): no model involved ------------------------
def read_maps(path: str | Path, segmentation: bool = False) -> tuple[np.ndarray, list[str]]:
    """Probability maps (float32 in [0, 1], 1 = cell interior) or, with ``segmentation``, label
    images (int64, each id > 0 a cell, 0 = boundary) from a stack, an image or a folder.

    8- and 16-bit maps are read as probabilities scaled by their type's maximum (a 0/255 binary
    map scores the same at every threshold); float maps must already lie in [0, 1].
    """
    from ..io.data import _read_raw
    from ..io.storage import local_copy

    slices, names, _ = _read_raw(local_copy(path), channels_warning=False)
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
    if stack.dtype in (np.uint8, np.uint16) and _looks_like_labels(stack):
        raise DataError(f"{path}: {stack.dtype} values look like a label image (ids up to {int(stack.max())}, few pixels in "
                        "the upper half of the range a probability map fills); pass --segmentation to score it as one")
    if stack.dtype in (np.uint8, np.uint16):
        return (stack * np.float32(1.0 / np.iinfo(stack.dtype).max)).astype(np.float32), names
    if stack.dtype.kind != "f":
        raise DataError(f"{path}: {stack.dtype} values look like a label image; pass --segmentation to score it as one")
    if not np.isfinite(stack).all() or stack.min() < 0 or stack.max() > 1:
        raise DataError(f"{path}: probabilities must be finite and lie in [0, 1] (1 = cell interior); "
                        f"found {float(np.nanmin(stack)):.4g}..{float(np.nanmax(stack)):.4g}")
    return stack.astype(np.float32), names


def _num(value: float, spec: str) -> str:
    """A score as text; an undefined one (NaN: a split or merge part with no pairs to count,
    as when a map holds one segment) as 'undefined' rather than 'nan'."""
    return "undefined" if value != value else format(value, spec)


def _looks_like_labels(stack: np.ndarray) -> bool:
    """An 8- or 16-bit stack of ids rather than a probability map: more than two values, yet under
    5 % of the pixels in the upper half of the type's range, where a map's cell interiors lie
    (a 0/255 binary map, or a map at all, fills it)."""
    high = np.iinfo(stack.dtype).max / 2
    sample = stack[:, ::4, ::4]
    return len(np.unique(sample)) > 2 and float((sample > high).mean()) < 0.05


def warn_if_inverted(maps: np.ndarray, labels: np.ndarray, source: str) -> None:
    """Warn where a map agrees with the labels better turned upside down: a membrane map (1 =
    membrane) scored as if 1 were cell interior."""
    interior = maps > 0.5
    agree = float((interior == labels.astype(bool)).mean())
    if agree < 0.5:
        log.warning(f"{source}: the map looks inverted: at 0.5 it agrees with the labels on {agree:.0%} of the pixels, "
                    f"inverted on {1 - agree:.0%}; maps are scored with 1 = cell interior, 0 = membrane (the ISBI "
                    "convention); if this is a membrane map, score 1 - map")


def pick_slices(maps: np.ndarray, labels: np.ndarray, slices: list[int] | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Restrict labels (and maps of the same length) to ``slices``; maps that already hold
    exactly the chosen slices are kept as they are."""
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
        th = "label image" if row["threshold"] is None else f"{row['threshold']:.1f}"
        values = " ".join(_num(row[k], "8.4f").rjust(8) for k in ("v_rand", "v_rand_split", "v_rand_merge", "v_info"))
        lines.append(f"{th:>18} {values}")
    lines.append("")
    lines.append(f"{'slice':<24} {'V_rand':>8} {'V_info':>8}")
    for name, row in zip(names, result["slices_at_best"]):
        lines.append(f"{str(name):<24} {_num(row['v_rand'], '8.4f')} {_num(row['v_info'], '8.4f')}")
    at = "" if "v_rand_threshold" not in result else f" at threshold {_num(result['v_rand_threshold'], '.1f')}"
    at_info = "" if "v_info_threshold" not in result else f" at threshold {_num(result['v_info_threshold'], '.1f')}"
    lines.append("")
    lines.append(f"Maximal V_rand after thinning: {_num(result['v_rand'], '.6f')}{at} "
                 f"(split {_num(result['v_rand_split'], '.4f')}, merge {_num(result['v_rand_merge'], '.4f')})")
    lines.append(f"Maximal V_info after thinning: {_num(result['v_info'], '.6f')}{at_info} "
                 f"(split {_num(result['v_info_split'], '.4f')}, merge {_num(result['v_info_merge'], '.4f')})")
    return "\n".join(lines)
