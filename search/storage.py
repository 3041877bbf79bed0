"""Storage URL -> Optuna storage: Optuna's own storages, so every study opens in Optuna's tools.

- ``sqlite:///hps.db`` (the embedded default) and ``postgresql://...`` (clusters): Optuna's
  RDBStorage with pre-ping, a connect timeout and a small bounded pool. A study hps writes is an
  ordinary Optuna study: ``optuna studies``, ``optuna.load_study`` and the stock
  ``optuna-dashboard URL`` read it as they read their own.
- a path without ``://`` (``studies.log``): Optuna's JournalStorage on that file, as the
  ``optuna`` CLI and optuna-dashboard read it (for ``hps copy``, and one-machine runs).

Heartbeats are on for workers, so a trial whose worker died becomes FAIL (with its reason stored)
and its params are retried once as a WAITING trial (:mod:`hps.search.trials`). This module imports neither torch nor the
trainer.
"""

from __future__ import annotations

import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.storages import BaseStorage, RDBStorage

from hps.search.errors import StudyError
from hps.search.optuna_compat import LiveAwareRDBStorage, rdb_backend
from hps.search.settings import settings


def storage_url(url: str | None = None) -> str:
    """``--storage``, else ``$HPS_STORAGE``, else ``sqlite:///hps.db``; a bare ``postgresql://``
    gets the psycopg2 driver named (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = url or settings().storage
    if re.fullmatch(r"sqlite:/{0,3}(:memory:)?(\?.*)?", url):
        raise StudyError(f"storage {url!r}: an in-memory SQLite database vanishes with the command, and the study with "
                         "it; give a file (sqlite:///hps.db) or postgresql://...")
    url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    if url.startswith("sqlite:///") and not url.startswith(("sqlite:////", "sqlite:///:memory:")):  # absolute path
        url = "sqlite:///" + os.path.abspath(url.removeprefix("sqlite:///"))
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs and provenance: all from the user's ``:`` to the last
    ``@`` goes (a password pasted raw may hold ``@ / : #``). Better still: no password in the URL,
    and ``PGPASSWORD`` set (libpq reads it; compose does that)."""
    return re.sub(r"^([\w+.-]+://[^:/@]*):.*@", r"\1:***@", url)


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite URL or a journal path (None for a database server)."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///").split("?")[0])
    return None if "://" in url else Path(url)


class NoStorage(StudyError):
    """A command that only reads was pointed at a SQLite or journal file that does not exist."""


def existing_storage(url: str | None = None) -> BaseStorage:
    """The storage for a command that only reads: a missing SQLite or journal file is
    :class:`NoStorage` (one line naming the path), never a new empty database."""
    url = storage_url(url)
    path = storage_file(url)
    if path is not None and not path.exists():
        raise NoStorage(f"no study storage at {path} (nothing was created); give --storage the URL your runs used "
                        "or set HPS_STORAGE")
    return get_storage(url, heartbeat=False)


def hint(url: str | None) -> str:
    """`` --storage URL`` for a hint printed after a command, when it used another storage than the
    default one here (pasting the hint then reads the same study); else ''."""
    from hps.search.settings import DEFAULT_STORAGE

    url = storage_url(url)
    return "" if url == storage_url(DEFAULT_STORAGE) else f" --storage {shlex.quote(redact(url))}"


def _rdb(url: str, engine: dict[str, Any], heartbeat: bool) -> RDBStorage:
    """Optuna's RDBStorage; with heartbeats, one whose stale trials leave out those whose worker is
    seen alive (:func:`hps.search.trials.still_running`), failed through :class:`LostWorker`."""
    if not heartbeat:
        return RDBStorage(url, engine_kwargs=engine)
    from hps.search.trials import LostWorker, grace_seconds, still_running

    return LiveAwareRDBStorage(url, alive=still_running, engine_kwargs=engine, heartbeat_interval=settings().heartbeat_seconds,
                               grace_period=grace_seconds(), heartbeat_stale_trial_callback=LostWorker())


def get_storage(url: str | None = None, *, pool_size: int = 2, heartbeat: bool = True) -> BaseStorage:
    """An RDB storage with pre-ping (survives a database restart) and a small, bounded pool:
    each process holds at most ``pool_size`` connections (+1 overflow) to the database. A path
    without ``://`` is a journal file."""
    url = storage_url(url)
    path = storage_file(url)
    if path is not None and path.is_dir():
        raise StudyError(f"storage {redact(url)}: {path} is a folder; give a file (sqlite:///{path / 'hps.db'})")
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and relied on here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            try:
                return JournalStorage(JournalFileBackend(url))
            except OSError as e:
                raise StudyError(f"cannot open journal file {url}: {e}") from None
        engine: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine["connect_args"] = {"application_name": "hps", "connect_timeout": settings().connect_timeout}
        if not url.startswith("sqlite"):
            engine.update(pool_size=pool_size, max_overflow=1, pool_recycle=300)
        for attempt in range(5):
            try:
                return _rdb(url, engine, heartbeat)
            except sqlalchemy.exc.OperationalError as e:  # the server did not answer or refused: may come back
                if attempt < 4 and _racing(e):
                    time.sleep(0.5 + attempt)
                    continue
                raise StorageUnavailable(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None
            except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError) as e:
                if attempt < 4 and _racing(e):  # another process is creating Optuna's tables right now
                    time.sleep(0.5 + attempt)
                    continue
                raise StudyError(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None
            except Exception as e:
                raise StudyError(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None
        raise AssertionError("unreachable")  # pragma: no cover


def _racing(e: Exception) -> bool:
    """Two processes creating Optuna's schema in a new database at once: one of them sees the
    other's half-made tables (``already exists``, a unique violation on the catalog, a lock)."""
    text = str(e).lower()
    return any(s in text for s in ("already exists", "uniqueviolation", "duplicate key", "database is locked"))


class StorageUnavailable(StudyError):
    """The database did not answer (down, restarting, unreachable): a worker may wait for it."""


# What a database that went away (a restart, a lost connection) raises: a worker waits these out.
OUTAGES: tuple[type[Exception], ...] = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
                                        sqlalchemy.exc.InterfaceError, StorageUnavailable)


def dispose(storage: BaseStorage) -> None:
    """Release a storage's database connections."""
    if (backend := rdb_backend(storage)) is not None:
        backend.engine.dispose()


def artifact_root(root: str | Path | None = None) -> str:
    """Where checkpoints, kept weights and exports live: ``root``, else ``$HPS_ARTIFACTS``, else
    ``hps-artifacts``; a folder every worker shares, or ``s3://bucket/prefix``."""
    return str(root or settings().artifacts)


def artifact_store(root: str | Path | None = None) -> Any:
    """:func:`artifact_root` as an Optuna artifact store: ``FileSystemArtifactStore`` for a folder
    (made if missing), ``Boto3ArtifactStore`` for ``s3://`` (boto3 installed, credentials from the
    environment)."""
    where = artifact_root(root)
    if where.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise StudyError(f"HPS_ARTIFACTS {where}: an S3 store needs boto3 (pip install boto3)") from None
        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        store = Boto3ArtifactStore(bucket)
        return _Prefixed(store, prefix) if prefix else store
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
        probe = Path(where) / f".hps-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StudyError(f"HPS_ARTIFACTS {where}: checkpoints and weights cannot be written there ({e.strerror or e}); "
                         "point it at a writable folder or s3://bucket/prefix") from None
    return FileSystemArtifactStore(where)


class _Prefixed:
    """An artifact store whose ids live under a prefix (an S3 key prefix)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.rstrip("/") + "/"

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)
