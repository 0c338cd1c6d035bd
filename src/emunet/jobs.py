"""Train and score folds: the shared path of the ``run`` and ``cv`` commands."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import Config
from .score.evaluate import write_eval_json
from .io.files import write_json
from .score.report import FoldResult, write_report
from .io.storage import local_folder, mirrored_run, shown
from .train.loop import RUN_FILES, TrainResult, prepare_output, train

__all__ = ["train_fold", "cross_validate", "cv_files"]


def train_fold(cfg: Config, resume: str | bool = False, progress: bool = True, overwrite: bool = False
               ) -> tuple[FoldResult, TrainResult]:
    """Train ``cfg``'s fold; its best weights' validation is the fold's result (nothing is read
    or scored twice). Returns the report's view of it and the training result (best model)."""
    trained = train(cfg, resume=resume, progress=progress, overwrite=overwrite)
    fold = FoldResult(cfg.data.fold, local_folder(cfg.out_dir), trained.report, trained.step, trained.val, trained.probs,
                      trained.seconds, trained.cells)
    return fold, trained


def cv_files(folds: list[int]) -> tuple[str, ...]:
    """What a cross-validation writes into its folder (what --overwrite replaces)."""
    return (*RUN_FILES, "cv.json", *(f"fold{k}" for k in folds))


def cross_validate(cfg: Config, folds: list[int], progress: bool = True, overwrite: bool = False, resume: bool = False
                   ) -> tuple[list[TrainResult], list[FoldResult], Path]:
    """Train and score each fold in ``out_dir/fold{k}``; write each fold's ``eval.json``, then
    ``cv.json`` (per fold, mean and spread) and ``report.html``. A fold folder that already
    holds a run is refused unless ``overwrite``, before any fold trains, or continued with
    ``resume``: an unfinished fold from its newest checkpoint, a finished one only re-read (its
    best weights scored again, nothing trained). ``out_dir`` may be a URL (see
    :func:`storage.mirrored_run`)."""
    with mirrored_run(cfg.out_dir, resume, overwrite, cv_files(folds)) as out:
        return _cross_validate(cfg, folds, out, progress, overwrite, resume)


def _cross_validate(cfg: Config, folds: list[int], out: Path, progress: bool, overwrite: bool, resume: bool
                    ) -> tuple[list[TrainResult], list[FoldResult], Path]:
    for k in folds:
        prepare_output(out / f"fold{k}", resume, overwrite)
    trained_folds, results = [], []
    for k in folds:
        fold_cfg = replace(cfg, out_dir=f"{str(cfg.out_dir).rstrip('/')}/fold{k}", data=replace(cfg.data, fold=k))
        if progress:
            print(f"== fold {k} ==")
        result, trained = train_fold(fold_cfg, resume=resume, progress=progress, overwrite=overwrite)
        write_eval_json(result.run_dir / "eval.json", result.report, checkpoint=shown(trained.best_path), step=result.step,
                        fold=k, precision=trained.precision, seconds=result.seconds)
        trained_folds.append(trained)
        results.append(result)
    means = {key: [r.report.mean[key] for r in results] for key in results[0].report.mean}
    summary = {
        "folds": folds,
        "per_fold": [{"fold": r.fold, **r.report.mean, "v_rand_threshold": r.report.challenge["v_rand_threshold"]}
                     for r in results],
        "mean": {k: float(np.mean(v)) for k, v in means.items()},
        "std": {k: float(np.std(v)) for k, v in means.items()},
    }
    write_json(out / "cv.json", summary)
    report = write_report(out / "report.html", results, title=f"Cross-validation report: {out}")
    return trained_folds, results, report
