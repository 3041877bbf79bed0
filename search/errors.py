"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import threading

# Set by hps's SIGTERM handler. The handler raises Terminated too, but a signal that lands in a
# garbage-collector or weakref callback has its exception swallowed ("Exception ignored in ..."):
# trials check this flag at each epoch and before they start, so the stop is never lost.
TERMINATING = threading.Event()


class SpaceError(ValueError):
    """A bad space file; the message names the file, key, value and what is allowed."""


class SettingsError(ValueError):
    """A bad ``HPS_*`` setting; the message names the variable, its value and what is allowed."""


class StudyError(RuntimeError):
    """A study that does not exist, holds no feasible trial, or cannot be reached."""


class RunFailed(StudyError):
    """A run that stopped because trials kept failing (or every Ray worker failed). ``result`` holds
    the study and the counts; the message names the first failure's reason."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``docker stop`` sends), handled as Ctrl-C: the running trial stops and is owed again."""


def on_sigterm(signum: int, frame: object) -> None:
    """hps's SIGTERM handler: remember it (:data:`TERMINATING`) and stop as Ctrl-C does."""
    TERMINATING.set()
    raise Terminated()


def user_error_types() -> tuple[type[Exception], ...]:
    from hps.trainers import ConfigError, DataError, TrainingDiverged

    return (SpaceError, SettingsError, StudyError, ConfigError, DataError, TrainingDiverged)
