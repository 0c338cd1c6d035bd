"""Fine-tuning: a trained model (a bundled one by name, or any checkpoint) trained further on a
user's own few labelled slices. The settings start from the model's own run (network, head,
augmentation, prediction, cells, pixel size; its input scaling is kept by training itself), with
the training changed for a short run from good weights: a tenth of the learning rate, no warm-up,
no decay, the batch-norm statistics kept (a few slices would pull them to themselves), 50 steps,
and every given slice training (few slices are too few to set some aside).
50 steps, not more: on VNC stack 1 (3 sections tuning, 6 others scored; benchmarks/fine_tune_vnc.py)
the cells scored 0.986 after 50 steps, 0.979 after 100 and 0.982 after 200, and the ISBI model
fine-tuned on 3 sections with the other 17 scored peaked at step 50 as well (docs/transfer.md).
The new slices' pixel size is not taken for the old ones': ``data.pixel_size`` is unset unless
given (training learns the slices at the size they are).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config, run_settings, with_overrides
from ..model.checkpoint import load

__all__ = ["FINE_TUNE", "FINE_TUNE_STEPS", "fine_tune_config"]

# What changes from the starting model's run; anything here can be overridden by KEY=VALUE.
FINE_TUNE_STEPS = 50
FINE_TUNE = (f"train.steps={FINE_TUNE_STEPS}", "train.lr=1e-4", "train.schedule=constant", "train.warmup_steps=0", "train.val_every=0",
             "train.select_by=last", "data.train_ratio=1", "data.inner_val=0", "data.test_images=null", "data.pixel_size=null",
             "predict.pixel_size=null", "train.freeze_norm=true")


def fine_tune_config(start: str | Path, overrides: list[str] = (), out_dir: str | Path | None = None) -> Config:
    """Settings to fine-tune ``start``: its run's, with :data:`FINE_TUNE`, then ``overrides``
    (``data.images=...``, ``data.labels=...``, ``train.steps=...``)."""
    cfg = run_settings(load(start))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init=str(start), threads=0, device="auto"))
    if out_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    return with_overrides(cfg, [*FINE_TUNE, *overrides])
