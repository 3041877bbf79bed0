"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class SpaceError(ValueError):
    """A bad space file; the message names the file, key, value and what is allowed."""


class StudyError(RuntimeError):
    """A study that does not exist, holds no feasible trial, or cannot be reached."""


def user_error_types() -> tuple[type[Exception], ...]:
    from trainers import ConfigError, DataError, TrainingDiverged

    return (SpaceError, StudyError, ConfigError, DataError, TrainingDiverged)
