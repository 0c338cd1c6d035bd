"""The problems a user can cause and fix, each worded for the user.

The command line prints these as one line naming the file or setting and exits with 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["EmunetError", "DataError", "ImageSizesDiffer", "ConfigError", "CheckpointError", "TrainingError", "UsageError",
           "TrainingInterrupted"]


class EmunetError(ValueError):
    """Base of every user-facing error."""


class DataError(EmunetError):
    """Images, masks or maps that cannot be used as given."""


class ImageSizesDiffer(DataError):
    """Images that must form one stack are of different sizes."""


class ConfigError(EmunetError):
    """A setting that is unknown, ill-typed or out of range."""

    @classmethod
    def check(cls, checks: list[tuple[bool, str]]) -> None:
        """Raise the message of the first check that fails."""
        for ok, message in checks:
            if not ok:
                raise cls(message)


class CheckpointError(EmunetError):
    """A checkpoint that cannot be read or does not fit."""


class TrainingError(EmunetError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class StorageError(EmunetError):
    """An object store that cannot be reached, refuses the credentials, or lacks the bucket or key."""


class UsageError(EmunetError):
    """Command-line arguments that do not go together."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint of the last whole step was saved."""

    def __init__(self, step: int, checkpoint: str) -> None:
        super().__init__(f"interrupted at step {step}; saved {checkpoint} (continue with --resume)")
