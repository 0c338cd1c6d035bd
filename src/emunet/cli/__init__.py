"""The ``unet`` command: train, evaluate, predict, and run (all three, the main job).

``options`` builds the parser, ``settings`` the settings a command runs with, ``commands`` does
each command's work through ``jobs`` and the Predictor; ``main`` here dispatches and turns the
package's errors into one line each.
"""

from __future__ import annotations

import logging
import sys
from types import MappingProxyType

from .commands import (cmd_cv, cmd_evaluate, cmd_export, cmd_import_mindspore, cmd_models, cmd_predict, cmd_presets, cmd_run,
                       cmd_score, cmd_train)
from .options import QUIET_MEANS_SILENT, build_parser

__all__ = ["main", "build_parser"]


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is when a line is written (not as it was when
    the handler was made): one ``main`` after another in a process, each with its own stderr."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_warnings() -> None:
    """The package's warnings (skipped files, suspicious masks) as one line each on stderr."""
    import logging

    logger = logging.getLogger("emunet")
    if not any(getattr(h, "_emunet", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("unet: warning: %(message)s"))
        handler._emunet = True
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


COMMANDS = MappingProxyType({"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "score": cmd_score, "run": cmd_run, "cv": cmd_cv,
                             "import-mindspore": cmd_import_mindspore, "export": cmd_export,
                             "presets": cmd_presets, "models": cmd_models})


_TRAINING_ADVICE = "lower train.batch_size or train.tile"
_MEMORY_ADVICE = MappingProxyType({
    "predict": "an OME-Zarr output (-o NAME.ome.zarr) is predicted and segmented block by block in bounded memory "
               "(--block 1024 on a small machine); or predict fewer sections at a time",
    "evaluate": "score fewer sections at a time (on a GPU, also a lower --batch-size)",
    "train": _TRAINING_ADVICE, "run": _TRAINING_ADVICE, "cv": _TRAINING_ADVICE})


def _out_of_memory(command: str, exc: Exception) -> int:
    cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    print(f"unet {command}: error: out of memory ({cause}); {_MEMORY_ADVICE.get(command, _MEMORY_ADVICE['predict'])}",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    import contextvars

    from ..errors import EmunetError

    args = build_parser().parse_args(argv)
    _show_warnings()
    try:
        if args.quiet and args.command in QUIET_MEANS_SILENT:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                return contextvars.copy_context().run(COMMANDS[args.command], args)
        # each command in its own context: the storage settings it takes end with it
        return contextvars.copy_context().run(COMMANDS[args.command], args)
    except EmunetError as exc:
        print(f"unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"unet {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # numpy's, where an array does not fit: what to change, not a traceback
        return _out_of_memory(args.command, exc)
    except RuntimeError as exc:  # PyTorch's allocators (CPU, and CUDA's OutOfMemoryError) say it in words
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        return _out_of_memory(args.command, exc)
    except KeyboardInterrupt as exc:  # TrainingInterrupted says which checkpoint holds the last whole step
        print(f"unet {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
