"""A self-contained HTML report of one or more cross-validation folds.

Pictures are embedded as base64 PNGs, so the page opens in any browser with no server: the
per-fold score table with mean and spread, training and validation curves, and for each
validation slice the image, the label, the probability map and its errors drawn over the
image (at the stack's best V_rand threshold: merges in red, splits in blue), then the cells in
random colours and their errors.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .challenge import segment_prediction, segment_truth, thin_segments
from ..io.files import atomic_write_bytes
from .evaluate import FoldResult

__all__ = ["FoldResult", "error_overlay", "cells_error_overlay", "cell_colours", "write_report"]

TABLE_KEYS = ("lab_dice", "v_rand", "v_info", "pixel_error_05", "cells_v_rand", "cells_v_info")
THUMB = 256


def _majority_error(owner: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels in ``mask`` whose ``other`` id is not the most common one within their ``owner`` id."""
    out = np.zeros(mask.shape, bool)
    o, t = owner[mask].astype(np.int64), other[mask].astype(np.int64)
    if o.size == 0:
        return out
    base = int(t.max()) + 1
    pairs, counts = np.unique(o * base + t, return_counts=True)
    owners = pairs // base
    order = np.lexsort((-counts, owners))  # per owner, its most common partner first
    first = np.ones(order.size, bool)
    first[1:] = owners[order][1:] != owners[order][:-1]
    majority = np.zeros(int(o.max()) + 1, np.int64)
    majority[owners[order][first]] = pairs[order][first] % base
    out[mask] = majority[o] != t
    return out


def error_overlay(image: np.ndarray, prob: np.ndarray, label: np.ndarray, threshold: float) -> np.ndarray:
    """RGB uint8: the image with merge errors (a predicted segment's pixels that belong to other
    than its main true cell) in red and split errors (a true cell's pixels outside its main
    predicted segment) in blue, for the thinned segmentation at ``threshold``."""
    return _errors_over(image, segment_prediction(prob, threshold), label)


def cells_error_overlay(image: np.ndarray, cells: np.ndarray, label: np.ndarray) -> np.ndarray:
    """:func:`error_overlay` of a label image (each id one cell), thinned as the challenge thins it."""
    return _errors_over(image, thin_segments(cells), label)


def _errors_over(image: np.ndarray, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    truth = segment_truth(label)
    inside = (label == 1) & (pred > 0)
    merge = _majority_error(pred, truth, inside)
    split = _majority_error(truth, pred, inside)
    rgb = np.repeat((image * 255).astype(np.uint8)[..., None], 3, axis=-1).astype(np.float32)
    rgb[merge] = 0.4 * rgb[merge] + 0.6 * np.array([230, 30, 30])
    rgb[split] = 0.4 * rgb[split] + 0.6 * np.array([30, 90, 240])
    return rgb.round().astype(np.uint8)


def cell_colours(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB uint8: each cell in a random colour (fixed by ``seed``), id 0 black."""
    palette = np.random.default_rng(seed).integers(40, 256, (int(cells.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[cells]


def _png(array: np.ndarray, size: int = THUMB) -> str:
    im = Image.fromarray(array)
    if max(im.size) > size:
        im = im.resize((size, round(size * im.size[1] / im.size[0])), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves(results: list[FoldResult]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for r in results:
        path = r.run_dir / "metrics.csv"
        if not path.exists():
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        train = [(int(x["step"]), float(x["loss"])) for x in rows if x.get("loss")]
        val = [(int(x["step"]), x) for x in rows if x.get("val_lab_dice")]
        if train:
            axes[0].plot(*zip(*train), label=f"fold {r.fold}")
        for ax, key, style, what in ((axes[1], "val_lab_dice", "o-", ""), (axes[2], "val_v_rand", "o-", " map"),
                                     (axes[2], "val_cells_v_rand", "s--", " cells")):
            pts = [(s, float(x[key])) for s, x in val if x.get(key)]
            if pts:
                ax.plot(*zip(*pts), style, label=f"fold {r.fold}{what}")
    for ax, title in zip(axes, ("training loss", "validation lab dice", "validation V_rand (map, cells)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0.911, color="grey", ls="--", lw=1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fold_table(results: list[FoldResult]) -> str:
    challenge_keys = ["challenge_pixel_error", "v_rand_split", "v_rand_merge", "v_info_split", "v_info_merge", "v_rand_threshold"]
    keys = ["fold", *TABLE_KEYS, *challenge_keys]
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = []
    values: dict[str, list[float]] = {k: [] for k in keys[1:]}
    for r in results:
        row = {**r.report.mean, **{k: r.report.challenge.get(k) for k in challenge_keys}}
        cells = [f"<td>{r.fold}</td>"]
        for k in keys[1:]:
            v = row.get(k)
            if v is not None:
                values[k].append(float(v))
            cells.append(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if len(results) > 1:
        body.append("<tr class=sum><td>mean</td>" + "".join(f"<td>{np.mean(values[k]):.4f}</td>" for k in keys[1:]) + "</tr>")
        body.append("<tr class=sum><td>std</td>" + "".join(f"<td>{np.std(values[k]):.4f}</td>" for k in keys[1:]) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _slices(r: FoldResult) -> str:
    th = r.report.challenge.get("v_rand_threshold", 0.5)
    rows = []
    for i, name in enumerate(r.volume.names):
        img = r.volume.images[i]
        label = r.volume.labels[i]
        prob = r.probs[i]
        scores = r.report.slices[i]
        caption = ", ".join(f"{k} {scores[k]:.4f}" for k in TABLE_KEYS if k in scores)
        pics = [
            (_png((img * 255).astype(np.uint8)), "image"),
            (_png((label * 255).astype(np.uint8)), "label (white = cell)"),
            (_png((prob * 255).round().astype(np.uint8)), "probability of cell"),
            (_png(error_overlay(img, prob, label, th)), f"errors at th {th:.1f}: merge red, split blue"),
        ]
        if r.cells is not None:
            pics += [(_png(cell_colours(r.cells[i])), f"cells ({len(np.unique(r.cells[i]))})"),
                     (_png(cells_error_overlay(img, r.cells[i], label)), "errors of the cells: merge red, split blue")]
        figs = "".join(f"<figure><img src='{src}' width={THUMB}><figcaption>{cap}</figcaption></figure>" for src, cap in pics)
        rows.append(f"<h3>fold {r.fold}: {html.escape(name)}</h3><p>{caption}</p><div class=row>{figs}</div>")
    return "".join(rows)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}tr.sum{font-weight:bold;background:#f4f4f4}
.row{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0}figcaption{font-size:12px;color:#444;max-width:256px}"""


def write_report(path: Path, results: list[FoldResult], title: str = "Cross-validation report") -> Path:
    """Write the HTML report atomically and return its path."""
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Scores on the held-out slices of each fold (cross-validation on the ISBI 2012 training slices, not "
        "challenge test-set figures). lab_dice: the MindSpore lab's soft dice, averaged per slice. V_rand, V_info: "
        "foreground-restricted scores after border thinning, averaged over slices at the best threshold of "
        "0.0..1.0, computed as the challenge's own code computes them; pixel_error_05: share of wrong pixels at 0.5; "
        "challenge_pixel_error: 1 - best pixel F-score over the same sweep. cells_v_rand, cells_v_info: the same "
        "scores of the cells (instance labels: the mutex watershed of an affinity model, the seeded watershed of a "
        "membrane model's map), no threshold.</p>",
        *(f"<p>Weights scored: {html.escape(r.chosen_by)}.</p>" for r in results[:1] if r.chosen_by),
        _fold_table(results),
        f"<h2>Curves</h2><img src='{_curves(results)}' style='max-width:100%'>",
        "<h2>Validation slices</h2>",
        *(_slices(r) for r in results),
        "</body></html>",
    ]
    atomic_write_bytes(Path(path), "\n".join(parts).encode())
    return Path(path)
