"""The run folder, one owner for it: where a run writes (local, or a local folder mirrored to a
store), what it refuses (a folder that holds another run, unless ``resume`` continues it or
``overwrite`` replaces the run's own files), and what it cleans up. ``train``, ``run`` and
``cv`` open their folder through :func:`open_run_folder` once; a folder inside one that is
open already (a cross-validation's folds) is checked, not mirrored again."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError
from .files import check_writable
from .storage import mirrored_run

__all__ = ["RUN_FILES", "open_run_folder", "prepare_output"]

# What a run writes into its folder: what --overwrite removes (nothing else is touched).
RUN_FILES = ("config.yaml", "checkpoints", "tensorboard", "metrics.csv", "validation.jsonl", "best.safetensors",
             "last.safetensors", "eval.json", "report.html", "test-probabilities.tif", "test-cells.tif", "test-overlays")


@contextmanager
def open_run_folder(out_dir: str | Path, resume: str | bool, overwrite: bool, run_files: tuple[str, ...] = RUN_FILES,
                    enabled: bool = True) -> Iterator[Path]:
    """The local folder a run writes in, checked before anything runs and (for a URL) mirrored
    to the store while the block runs. ``enabled=False`` (ranks > 0) only names the folder."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in the output folder and --overwrite replaces it; give one")
    with mirrored_run(str(out_dir), bool(resume), overwrite, run_files, enabled=enabled) as local:
        if enabled:
            prepare_output(local, resume, overwrite, run_files)
        yield local


def prepare_output(out: Path, resume: str | bool, overwrite: bool, run_files: tuple[str, ...] = RUN_FILES) -> None:
    """Check the output folder before anything runs: a folder that already holds files is
    refused unless the run continues (``resume``) or replaces the run in it (``overwrite``:
    the run's own files are removed, nothing else); an unwritable folder fails now, not after
    hours of training."""
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not resume:
        if not overwrite:
            shown = ", ".join(entries[:4]) + (" ..." if len(entries) > 4 else "")
            raise UsageError(f"{out}: the output folder is not empty ({shown}); continue its run with --resume, "
                             "replace it with --overwrite, or choose another --out")
        for name in run_files:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        check_writable(out)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write to the output folder ({exc.strerror or exc})") from None
    checkpoints = out / "checkpoints"
    for stale in checkpoints.glob(".*.tmp") if checkpoints.is_dir() else []:
        stale.unlink()  # left by a run killed in the middle of a write
