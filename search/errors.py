"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import threading

# Set by hps's SIGTERM and SIGINT handlers. Each handler raises too, but a signal that lands in a
# garbage-collector or weakref callback has its exception swallowed ("Exception ignored in ..."):
# trials check these flags before they start and at each epoch (:func:`check_stop`), so a stop is
# never lost.
TERMINATING = threading.Event()
INTERRUPTED = threading.Event()


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


def on_sigint(signum: int, frame: object) -> None:
    """hps's SIGINT handler (Ctrl-C, a notebook's stop button): remember it and raise as Python does."""
    INTERRUPTED.set()
    raise KeyboardInterrupt()


def check_stop() -> None:
    """Raise the stop a signal asked for, if its own exception was swallowed."""
    if TERMINATING.is_set():
        raise Terminated()
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt()


def user_error_types() -> tuple[type[Exception], ...]:
    from hps.trainers import ConfigError, DataError, TrainingDiverged

    return (SpaceError, SettingsError, StudyError, ConfigError, DataError, TrainingDiverged)
