"""One run's log: ``metrics.csv`` (a row per logged step), ``validation.jsonl`` (every
validation's per-slice scores) and TensorBoard, with the run's clocks.

Only rank 0 writes (``enabled``); the others keep the clocks and nothing else. A resumed run
keeps the rows up to the step it resumes from and drops the rest, so the files never mix a
stopped run's later steps with the new ones.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from ..score.evaluate import CELL_NAMES, CHALLENGE_NAMES, ScoreReport
from ..io.files import atomic_write_bytes, finite_json
from ..score.metrics import SCORE_NAMES

__all__ = ["CSV_FIELDS", "RunLog"]

CSV_FIELDS = ("step", "loss", "lr", "images_per_s", "train_s", "wall_s", *[f"val_{k}" for k in (*SCORE_NAMES, *CHALLENGE_NAMES, *CELL_NAMES)])


def _read_csv(path: Path, up_to: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= up_to]


def _read_jsonl(path: Path, up_to: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if int(r["step"]) <= up_to]


class RunLog:
    """The log files of ``out``, resumed at ``step``, and two clocks: training seconds (validation
    left out, summed over resumed segments) and wall seconds."""

    def __init__(self, out: Path, enabled: bool, step: int = 0) -> None:
        self.out, self.enabled = out, enabled
        self.rows: list[dict] = _read_csv(out / "metrics.csv", step) if enabled and step else []
        self.validations: list[dict] = _read_jsonl(out / "validation.jsonl", step) if enabled and step else []
        last = self.rows[-1] if self.rows else {}
        self.train_s = float(last.get("train_s") or 0.0)
        self._wall_base = float(last.get("wall_s") or 0.0)
        self._segment_start = self._running_since = time.perf_counter()
        self._paused = False
        self._window_loss, self._window_steps, self._window_s = 0.0, 0, 0.0
        self._row: dict[str, Any] | None = None
        self.tensorboard = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._write_metrics()
            self._write_validations()
            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)

    # --- clocks: validation is left out of training time ---------------------------------
    def pause(self) -> None:
        if not self._paused:
            elapsed = time.perf_counter() - self._running_since
            self.train_s += elapsed
            self._window_s += elapsed
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._running_since = time.perf_counter()
            self._paused = False

    def _train_seconds_now(self) -> float:
        return self.train_s + (0.0 if self._paused else time.perf_counter() - self._running_since)

    # --- rows ------------------------------------------------------------------------------
    def add_loss(self, loss: float) -> None:
        self._window_loss += loss
        self._window_steps += 1

    def log_training(self, step: int, mean_loss: float, lr: float, batch_size: int) -> dict[str, Any]:
        """Close the logging window: its mean loss (averaged over ranks by the caller), the
        learning rate and images per second of training."""
        was_paused = self._paused
        self.pause()
        row = {"step": step, "loss": mean_loss, "lr": lr,
               "images_per_s": self._window_steps * batch_size / max(self._window_s, 1e-9), "train_s": self.train_s}
        if not was_paused:
            self.resume()
        self._window_loss, self._window_steps, self._window_s = 0.0, 0, 0.0
        self._row = row
        if self.tensorboard is not None:
            for key in ("loss", "lr", "images_per_s"):
                self.tensorboard.add_scalar(f"train/{key}", row[key], step)
        return row

    def window_loss(self) -> float:
        return self._window_loss / max(self._window_steps, 1)

    def validation_started(self, step: int) -> None:
        """Give ``step`` a row (if logging gave it none), which its scores will fill."""
        self._row = self._row or {"step": step, "train_s": self._train_seconds_now()}

    def log_validation(self, step: int, report: ScoreReport) -> None:
        """Record the scores of the validation at ``step``: in this step's row, or, scored in
        the background and arriving later, in its row already written."""
        scores = {f"val_{k}": v for k, v in report.mean.items()}
        written = next((r for r in reversed(self.rows) if int(r["step"]) == step), None)
        if written is not None:
            written.update(scores)
            if self.enabled:
                self._write_metrics()
        else:
            self._row = (self._row or {"step": step, "train_s": self._train_seconds_now()}) | scores
        if not self.enabled:
            return
        self.validations.append({"step": step, "mean": report.mean, "slices": report.slices})
        self._write_validations()
        for key, value in report.mean.items():
            self.tensorboard.add_scalar(f"val/{key}", value, step)

    def end_step(self) -> None:
        """Write the step's row, if it has one."""
        if self._row is not None and self.enabled:
            self._row["wall_s"] = self._wall_base + time.perf_counter() - self._segment_start
            self.rows.append(self._row)
            self._write_metrics()
        self._row = None

    def _write_metrics(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.out / "metrics.csv", buf.getvalue().encode())

    def _write_validations(self) -> None:
        lines = "".join(json.dumps(finite_json(r), allow_nan=False) + "\n" for r in self.validations)
        atomic_write_bytes(self.out / "validation.jsonl", lines.encode())

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
