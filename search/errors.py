"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

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


# Exit codes of every command (docs/exit-codes.md): one per kind of outcome.
OK, FAILED, REFUSED, UNAVAILABLE, INTERRUPTED_CODE, TERMINATED_CODE = 0, 1, 2, 3, 130, 143

_OS_WORDS = {errno.EISDIR: "is a folder, not a file", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.ENOSPC: "no space left on the device", errno.EROFS: "is on a read-only file system",
             errno.EACCES: "permission denied", errno.EPERM: "not permitted",
             errno.ENOENT: "no such file or folder", errno.EDQUOT: "disk quota exceeded",
             errno.EEXIST: "exists and is not a folder"}


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return seen


def write_text(path: Path, text: str, what: str) -> None:
    """Write a file the user named (``what``: the option, e.g. ``-o``); an OSError is one
    :class:`StudyError` naming the path and why (a folder, unwritable, full, read-only)."""
    try:
        path.write_text(text)
    except OSError as e:
        raise StudyError(f"{what} {path}: cannot write it ({_OS_WORDS.get(e.errno or 0, e.strerror or str(e))})") from None


def environment_line(e: BaseException, storage: str | None = None) -> str | None:
    """One line for a path the command cannot use (a folder, unwritable, full, read-only), naming
    the path; None if ``e`` (or what it chains) is no such error. ``storage``: the storage URL the
    command used, named when the database itself is read-only."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno is not None and not isinstance(x, ConnectionError):
            where = x.filename if x.filename is not None else "a file"
            return f"{where}: {_OS_WORDS.get(x.errno, x.strerror or str(x))}"
        text = str(x).lower()
        if "readonly database" in text or "read-only database" in text or "read-only file system" in text:
            from hps.search.storage import redact, storage_url

            url = redact(storage_url(storage))
            return (f"storage {url}: the database is read-only (its file or folder cannot be written); "
                    "make it writable, or hps copy the study to a storage that is")
    return None
