"""Progress that reads well in a terminal and in a log: a tqdm bar on a terminal; elsewhere
(a log file, CI, a pipe) a plain line every ``every`` seconds and at the end, with no carriage
returns or escape codes."""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

__all__ = ["progress_bar"]


class _Lines:
    """The part of tqdm's interface the package uses, printing whole lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, every: float) -> None:
        self.total, self.desc, self.unit, self.n, self.every = total, desc, unit, initial, every
        self.start = self.last = time.perf_counter()
        self.postfix = ""

    def _print(self) -> None:
        elapsed = time.perf_counter() - self.start
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {elapsed:.0f} s{extra}", file=sys.stderr, flush=True)
        self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        self._print()


class _Silent(_Lines):
    def _print(self) -> None:
        pass


class _Iterating:
    def __init__(self, items: Iterable, bar: Any) -> None:
        self.items, self.bar = items, bar

    def __iter__(self):
        try:
            for item in self.items:
                yield item
                self.bar.update(1)
        finally:
            self.bar.close()


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, initial: int = 0,
                 items: Iterable | None = None, every: float = 10.0, transient: bool = False):
    """A progress bar over ``total`` units (or over ``items``, iterated): tqdm on a terminal,
    plain lines every ``every`` seconds elsewhere, nothing when not ``enabled``. ``transient``
    bars (per image, per tile) leave no line behind on a terminal."""
    if items is not None:
        total = len(items) if total is None else total  # type: ignore[arg-type]
    if not enabled:
        bar: Any = _Silent(total or 0, desc, unit, initial, every)
    elif sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=not transient, dynamic_ncols=True)
    else:
        bar = _Lines(total or 0, desc, unit, initial, every)
    return _Iterating(items, bar) if items is not None else bar
