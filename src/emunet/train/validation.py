"""Validation during training: the fold is predicted at the step, and scored either then or in a
background thread while the next steps train.

Scoring (the lab dice, thinning, the challenge's V_rand and V_info at 11 thresholds) runs on the
CPU; on a GPU it would otherwise stall the device for longer than the prediction itself. The
scores of a validation arrive in step order with everything needed to act on them as if they
had been computed at the step: the weights that were scored and, where the run asked for it, the
training state of that step for its checkpoint.
"""

from __future__ import annotations

import copy
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import PredictConfig
from ..io.data import Volume
from ..score.evaluate import ScoreReport, score_prediction
from ..model.unet import UNet
from ..infer.predictor import Predictor
from ..infer.segment import SegmentConfig

__all__ = ["ScoredValidation", "FoldScorer", "snapshot_of"]


@dataclass
class ScoredValidation:
    """One validation, scored: the step, the weights scored (eval mode), the probabilities, the
    cells and their report, and the training state of the step when it was kept for a checkpoint."""

    step: int
    model: UNet
    probs: np.ndarray
    cells: np.ndarray
    report: ScoreReport
    snapshot: dict[str, Any] | None


def snapshot_of(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a training state whose tensors later steps do not change (cloned on their own
    device: on a GPU a fraction of a millisecond per hundred megabytes)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: snapshot_of(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot_of(v) for v in state)
    return copy.deepcopy(state)


class FoldScorer:
    """Predicts the validation fold and scores it, in the foreground or (``background``) in one
    worker thread, so that at most one scoring runs beside training."""

    def __init__(self, volume: Volume, pcfg: PredictConfig, segment: SegmentConfig, precision: str, background: bool
                 ) -> None:
        self.volume, self.pcfg, self.segment, self.precision, self.background = volume, pcfg, segment, precision, background
        self._pending: deque[tuple[int, UNet, np.ndarray, Future | tuple, dict | None]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emunet-scoring") if background else None

    def submit(self, step: int, model: UNet, snapshot: dict[str, Any] | None = None) -> None:
        """Predict the fold with a copy of ``model`` as its deployed weights will predict (eval
        mode, laid out for inference as loaded weights are), segment it into cells and score both."""
        deployed = copy.deepcopy(model).eval()
        prediction = Predictor([deployed], self.pcfg, self.segment, self.precision).predict(self.volume)
        if self._pool is not None:
            scored: Future | tuple = self._pool.submit(score_prediction, prediction, self.volume, self.segment, False)
        else:
            scored = score_prediction(prediction, self.volume, self.segment, warn=False)
        self._pending.append((step, deployed, prediction.probs, scored, snapshot))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def finished(self, wait: bool = False) -> list[ScoredValidation]:
        """The validations scored so far, oldest first (all of them, waiting, with ``wait``)."""
        done = []
        while self._pending:
            step, model, probs, scored, snapshot = self._pending[0]
            if isinstance(scored, Future):
                if not (wait or scored.done()):
                    break
                scored = scored.result()  # an error in the scoring thread is raised here
            self._pending.popleft()
            report, cells = scored
            done.append(ScoredValidation(step, model, probs, cells, report, snapshot))
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
