"""Train and score folds: the shared path of the ``run`` and ``cv`` commands."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .checkpoint import load_model
from .config import Config
from .evaluate import predict_volume, score_probabilities, write_json
from .report import FoldResult, write_report
from .train import load_split, resolve_device, resolve_precision, train

__all__ = ["train_and_score", "cross_validate"]


def train_and_score(cfg: Config, resume: str | bool = False, progress: bool = True):
    """Train ``cfg``, reload its best weights and score its validation fold.

    Returns the :class:`FoldResult`, the best model (eval mode) and the precision used.
    """
    start = time.perf_counter()
    best = train(cfg, resume=resume, progress=progress)
    train_s = time.perf_counter() - start
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model, info = load_model(best, device)
    _, val = load_split(cfg)
    t0 = time.perf_counter()
    probs = predict_volume(model, val, cfg.predict, precision, progress)
    report = score_probabilities(probs, val)
    report["step"] = info.get("step")
    result = FoldResult(cfg.data.fold, Path(cfg.out_dir), report, val, probs,
                        {"train": train_s, "eval": time.perf_counter() - t0})
    return result, model, precision


def cross_validate(cfg: Config, folds: list[int], progress: bool = True) -> tuple[list[FoldResult], Path]:
    """Train and score each fold in ``out_dir/fold{k}``; write ``cv.json`` and ``report.html``."""
    out = Path(cfg.out_dir)
    results = []
    for k in folds:
        fold_cfg = replace(cfg, out_dir=str(out / f"fold{k}"), data=replace(cfg.data, fold=k))
        if progress:
            print(f"== fold {k} ==")
        result, _, precision = train_and_score(fold_cfg, progress=progress)
        write_json(result.run_dir / "eval.json", {"fold": k, "precision": precision, **result.report, "seconds": result.seconds})
        results.append(result)
    means = {key: [r.report["mean"][key] for r in results] for key in results[0].report["mean"]}
    summary = {
        "folds": folds,
        "per_fold": [{"fold": r.fold, **r.report["mean"], "v_rand_threshold": r.report["challenge"]["v_rand_threshold"]}
                     for r in results],
        "mean": {k: float(np.mean(v)) for k, v in means.items()},
        "std": {k: float(np.std(v)) for k, v in means.items()},
    }
    write_json(out / "cv.json", summary)
    report = write_report(out / "report.html", results, title=f"Cross-validation report: {out}")
    return results, report
