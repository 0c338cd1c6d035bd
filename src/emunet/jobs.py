"""The commands as functions a Python user can call: ``run`` (train a fold, score it, segment the
test images), ``cross_validate`` (several folds and their ensemble), ``evaluate`` (score
checkpoints on labelled images), ``score`` (saved maps against labels). Each opens its run
folder once (local, or mirrored to a store), writes its outputs there and hands back what it
did; the CLI parses, calls and prints.

>>> from emunet.config import load_config
>>> from emunet.jobs import run
>>> done = run(load_config("configs/isbi-cpu.yaml"))
>>> done.fold.report.mean["v_rand"], done.eval_json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from .config import Config
from .infer.predict import SegmentedFile
from .infer.predictor import Predictor
from .io.files import write_json
from .io.runfolder import RUN_FILES, open_run_folder, prepare_output
from .io.storage import is_url, shown, staged_output
from .score.evaluate import FoldResult, ScoreReport, score_prediction, write_eval_json
from .score.report import write_report
from .train.loop import train

__all__ = ["run", "train_fold", "cross_validate", "evaluate", "score", "cv_files", "RunDone", "CrossValidationDone", "EvaluateDone",
           "ScoreDone"]


@dataclass
class RunDone:
    """What ``run`` did: the fold's result, the test images' outputs, where its record is."""

    fold: FoldResult
    test: SegmentedFile | None
    report_html: Path
    eval_json: Path
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class CrossValidationDone:
    folds: list[FoldResult]
    test: SegmentedFile | None
    report_html: Path
    cv_json: Path


@dataclass
class EvaluateDone:
    report: ScoreReport
    data: str  # what was scored, in words
    json: str | Path  # where the scores were written


def train_fold(cfg: Config, resume: str | bool = False, progress: bool = True, overwrite: bool = False) -> FoldResult:
    """Train ``cfg``'s fold; its best weights' validation is the fold's result (nothing is read
    or scored twice)."""
    return train(cfg, resume=resume, progress=progress, overwrite=overwrite)


def _segment_test_images(cfg: Config, folds: Sequence[FoldResult], out: Path, progress: bool) -> SegmentedFile | None:
    """The test images segmented by the folds' best models together (an ensemble for several)."""
    if not cfg.data.test_images:
        return None
    predictor = Predictor.of_run([f.model for f in folds], cfg, folds[0].precision, folds[0].volume.intensity)
    return predictor.write(cfg.data.test_images, out / "test-probabilities.tif", out / "test-cells.tif",
                           overlays=out / "test-overlays", progress=progress)


def run(cfg: Config, resume: str | bool = False, overwrite: bool = False, progress: bool = True) -> RunDone:
    """Train ``cfg``'s fold, score its best weights on the fold, segment ``data.test_images``,
    and write ``report.html`` and ``eval.json`` (the run's record) into ``out_dir``."""
    _needs_a_fold(cfg, "run")
    with open_run_folder(cfg.out_dir, resume, overwrite) as out:
        start = time.perf_counter()
        fold = train_fold(cfg, resume=resume, progress=progress, overwrite=overwrite)
        seconds = dict(fold.seconds)
        test = _segment_test_images(cfg, [fold], out, progress)
        if test is not None:
            seconds["predict"] = test.seconds
        report = write_report(out / "report.html", [fold], title=f"Fold {cfg.data.fold} report: {out}")
        seconds["total"] = time.perf_counter() - start
        write_eval_json(out / "eval.json", fold.report, checkpoint=shown(fold.best_path), step=fold.step,
                        chosen_by=fold.chosen_by, fold=cfg.data.fold, precision=fold.precision, seconds=seconds)
        return RunDone(fold, test, report, out / "eval.json", seconds)


def _needs_a_fold(cfg: Config, command: str) -> None:
    from .errors import ConfigError

    if cfg.data.train_ratio == 1:
        raise ConfigError(f"'{command}' scores held-out slices, and data.train_ratio=1 holds out none: train on every "
                          "slice with 'unet train', or give a ratio under 1")


def cv_files(folds: list[int]) -> tuple[str, ...]:
    """What a cross-validation writes into its folder (what --overwrite replaces)."""
    return (*RUN_FILES, "cv.json", *(f"fold{k}" for k in folds))


def cross_validate(cfg: Config, folds: list[int], progress: bool = True, overwrite: bool = False, resume: bool = False
                   ) -> CrossValidationDone:
    """Train and score each fold in ``out_dir/fold{k}``; write each fold's ``eval.json``, then
    ``cv.json`` (per fold, mean and spread) and ``report.html``, and segment the test images
    with the folds' models together. A fold folder that already holds a run is refused unless
    ``overwrite``, before any fold trains, or continued with ``resume``: an unfinished fold
    from its newest checkpoint, a finished one only re-read (its best weights scored again,
    nothing trained). ``out_dir`` may be a URL (see :func:`storage.mirrored_run`)."""
    _needs_a_fold(cfg, "cv")
    with open_run_folder(cfg.out_dir, resume, overwrite, cv_files(folds)) as out:
        for k in folds:
            prepare_output(out / f"fold{k}", resume, overwrite)
        results = [_fold_of_cv(cfg, k, progress, overwrite, resume) for k in folds]
        cv_json = out / "cv.json"
        write_json(cv_json, _cv_summary(folds, results))
        report = write_report(out / "report.html", results, title=f"Cross-validation report: {out}")
        # as nnU-Net does: the folds' models, each trained on different slices, predict together
        test = _segment_test_images(cfg, results, out, progress)
        return CrossValidationDone(results, test, report, cv_json)


def _fold_of_cv(cfg: Config, k: int, progress: bool, overwrite: bool, resume: bool) -> FoldResult:
    fold_cfg = replace(cfg, out_dir=f"{str(cfg.out_dir).rstrip('/')}/fold{k}", data=replace(cfg.data, fold=k))
    if progress:
        print(f"== fold {k} ==")
    result = train_fold(fold_cfg, resume=resume, progress=progress, overwrite=overwrite)
    write_eval_json(result.run_dir / "eval.json", result.report, checkpoint=shown(result.best_path), step=result.step,
                    chosen_by=result.chosen_by, fold=k, precision=result.precision, seconds=result.seconds)
    return result


def _cv_summary(folds: list[int], results: list[FoldResult]) -> dict:
    means = {key: [r.report.mean[key] for r in results] for key in results[0].report.mean}
    return {
        "folds": folds,
        "chosen_by": results[0].chosen_by,
        "per_fold": [{"fold": r.fold, "step": r.step, **r.report.mean, "v_rand_threshold": r.report.challenge["v_rand_threshold"]}
                     for r in results],
        "mean": {k: float(np.mean(v)) for k, v in means.items()},
        "std": {k: float(np.std(v)) for k, v in means.items()},
    }


def evaluate(predictor: Predictor | str | Path | Sequence[str | Path], images: str | Path | None = None,
             labels: str | Path | None = None, fold: int | None = None, foreground: int | None = None,
             mask_threshold: float | None = None, json: str | Path | None = None, progress: bool = True) -> EvaluateDone:
    """Score ``predictor`` (a :class:`Predictor`, or checkpoints or a bundled model's name, loaded
    with the defaults) on the files or folders ``images`` and ``labels`` (all of them), or by
    default on the validation fold of the run that wrote its first checkpoint (or on ``fold``).
    The scores go to ``json``, by default beside the checkpoint (eval.json), never over a run's
    own record."""
    from .errors import UsageError
    from .io.data import load_labelled
    from .train.sampling import fold_split

    for name, given in (("images", images), ("labels", labels)):
        if given is not None and not isinstance(given, (str, Path)):
            raise TypeError(f"evaluate: {name} is a path (a file or folder of images), not {type(given).__name__}; "
                            "for arrays in memory, Predictor.predict gives the map to score")
    if not isinstance(predictor, Predictor):
        predictor = Predictor.load(predictor)
    cfg = predictor.config
    foreground = cfg.data.foreground if foreground is None else foreground
    threshold = cfg.data.mask_threshold if mask_threshold is None else mask_threshold
    if bool(images) != bool(labels):
        raise UsageError("images and labels go together: give both, or neither to score the run's own fold")
    if not images and cfg.data.train_ratio == 1:
        raise UsageError(f"{predictor.paths[0]} was trained on every slice of {cfg.data.images}, so it has no fold to "
                         "score; give images and labels to score it on")
    volume = load_labelled(images or cfg.data.images, labels or cfg.data.labels, foreground, mask_threshold=threshold,
                           channel=predictor.channel, intensity=predictor.intensity)
    if images:
        data = f"all of {images}"
    else:
        fold = cfg.data.fold if fold is None else fold
        volume = volume.subset(fold_split(len(volume), fold, cfg.data.train_ratio)[1])
        data = f"fold {fold} of {cfg.data.images}"
    start = time.perf_counter()
    report, _ = score_prediction(predictor.predict(volume, progress=progress), volume, predictor.segment)
    out = evaluate_json(json, predictor.paths)
    checkpoints = str(predictor.paths[0]) if len(predictor.models) == 1 else [str(c) for c in predictor.paths]
    with staged_output(out) as local:
        write_eval_json(local, report, checkpoint=checkpoints, step=predictor.step, data=data, precision=predictor.precision,
                        predict=vars(predictor.settings), seconds={"eval": time.perf_counter() - start})
    return EvaluateDone(report, data, out)


@dataclass
class ScoreDone:
    """What ``score`` did: the challenge's scores (``score_stack`` or ``score_segmentation_stack``
    of :mod:`score.challenge`), the scored slices' names, and the seconds scoring took."""

    result: dict
    names: list[str]
    slices: list[int] | None
    seconds: float
    json: str | Path | None = None


def score(maps: str | Path, labels: str | Path, foreground: int = 255, mask_threshold: float | None = None,
          segmentation: bool = False, slices: Sequence[int] | None = None, fold: int | None = None,
          json: str | Path | None = None) -> ScoreDone:
    """Score saved maps (or label images, ``segmentation``) against labels as the challenge does,
    on all slices, the listed ``slices`` or fold ``fold``'s validation slices; the scores are
    written to ``json`` (a path or URL) where given. ``foreground``: the mask value of the cell
    interior (ISBI: 255)."""
    from .errors import DataError, UsageError
    from .io.data import read_labels
    from .score.challenge import score_segmentation_stack, score_stack
    from .score.evaluate import pick_slices, read_maps, warn_if_inverted
    from .train.sampling import fold_split

    if slices is not None and fold is not None:
        raise UsageError("slices and a fold both choose slices; give one")
    truth, _ = read_labels(labels, foreground, mask_threshold)
    stack, names = read_maps(maps, segmentation)
    chosen = sorted(fold_split(len(truth), fold)[1]) if fold is not None else (list(slices) if slices is not None else None)
    stack, truth = pick_slices(stack, truth, chosen, maps)
    if stack.shape[1:] != truth.shape[1:]:
        raise DataError(f"{maps}: maps are {stack.shape[1]}x{stack.shape[2]} but labels are {truth.shape[1]}x{truth.shape[2]}")
    if chosen is not None:
        names = [f"slice {i}" for i in chosen]
    elif len(names) != len(stack):
        names = [f"slice {i}" for i in range(len(stack))]
    if not segmentation:
        warn_if_inverted(stack, truth, maps)
    start = time.perf_counter()
    result = score_segmentation_stack(stack, truth) if segmentation else score_stack(stack, truth)
    seconds = time.perf_counter() - start
    if json:
        with staged_output(json) as local:
            write_json(local, {"maps": str(maps), "labels": str(labels), "slices": chosen, "segmentation": segmentation,
                               **result, "seconds": seconds})
    return ScoreDone(result, names, chosen, seconds, json)


def is_run_record(path: str | Path) -> bool:
    """Whether ``path`` is the eval.json a run wrote (its validation scores and times)."""
    import json

    from .io.storage import exists, local_copy

    try:
        return exists(path) and "train" in (json.loads(local_copy(path).read_text()).get("seconds") or {})
    except (OSError, ValueError, AttributeError):
        return False


def evaluate_json(given: str | Path | None, checkpoints: Sequence[str | Path]) -> str | Path:
    """Where evaluate writes its scores: ``given``, or beside the first checkpoint (eval.json, or
    eval-ensemble.json for several; for an imported .ckpt, often in a read-only data folder, or a
    bundled model's name, NAME-eval.json here); never over a run's own record (then evaluate.json beside it)."""
    from .errors import UsageError

    if given is not None:
        if is_run_record(given):
            raise UsageError(f"{given}: the run's own record (its validation scores and times); choose another --json")
        return given
    from .model.bundled import names_a_model

    first = checkpoints[0]
    name = "eval.json" if len(checkpoints) == 1 else "eval-ensemble.json"
    stem, suffix = PurePosixPath(str(first)).stem, PurePosixPath(str(first)).suffix
    here = suffix == ".ckpt" or names_a_model(first)  # a bundled model's file lives in the package
    beside = Path(f"{stem}-{name}") if here else (f"{str(first).rsplit('/', 1)[0]}/{name}" if is_url(first)
                                                                else Path(first).with_name(name))
    if is_run_record(beside):  # only a single model's eval.json can be one
        renamed = str(beside)[: -len("eval.json")] + "evaluate.json"
        return renamed if isinstance(beside, str) else Path(renamed)
    return beside

