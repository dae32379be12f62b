"""Errors a user can act on.

Every error raised because of bad input (a path that does not exist, an option that does not fit
the checkpoint, a tokenizer that breaks a task's alignment) is a `UserError`: its message says what
was wrong and what to do. The CLI prints these without a traceback; library users catch them.
"""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Bad input from the user; the message says what was wrong and how to fix it."""


class CheckpointError(UserError):
    """A model source could not be loaded."""


class DataError(UserError):
    """A text corpus or dataset could not be loaded or packed."""


class TaskError(UserError):
    """A task could not be generated or rendered for the given tokenizer."""


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM stopped a training run at a step boundary, after a checkpoint of that step
    was written. step: optimizer steps done; folder: the run folder (resume it with resume=True)."""

    def __init__(self, message: str, *, step: int, folder: Path) -> None:
        super().__init__(message)
        self.step, self.folder = step, folder
