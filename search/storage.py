"""Storage URL -> Optuna storage: Optuna's own storages, so every study opens in Optuna's tools.

- ``sqlite:///hps.db`` (the embedded default) and ``postgresql://...`` (clusters): Optuna's
  RDBStorage with pre-ping, a connect timeout and a small bounded pool. A study hps writes is an
  ordinary Optuna study: ``optuna studies``, ``optuna.load_study`` and the stock
  ``optuna-dashboard URL`` read it as they read their own.
- a path without ``://`` (``studies.log``): Optuna's JournalStorage on that file, as the
  ``optuna`` CLI and optuna-dashboard read it (for ``hps copy``, and one-machine runs).

Heartbeats are on for workers, so a trial whose worker died becomes FAIL (with its reason stored)
and its params are retried once as a WAITING trial. This module imports neither torch nor the
trainer.
"""

from __future__ import annotations

import json
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
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hps.search.errors import StudyError
from hps.search.record import FAIL_REASON, WHY, WORKER, trial_info
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


def _heartbeat_kw() -> dict[str, Any]:
    beat = settings().heartbeat_seconds
    return {"heartbeat_interval": beat, "grace_period": 2 * beat,
            "heartbeat_stale_trial_callback": LostWorker()}


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
                return RDBStorage(url, engine_kwargs=engine, **(_heartbeat_kw() if heartbeat else {}))
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


class LostWorker:
    """Optuna's stale-trial callback (the trial is FAIL once its worker stops beating): store why
    on the failed trial, then retry its params once as a new WAITING trial."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = (f"no heartbeat from its worker for {2 * settings().heartbeat_seconds} s (killed, out of memory or "
                  f"lost); worker: {trial_info(trial, WORKER, 'unknown')}")
        record_reason(study._storage, trial._trial_id, reason)
        self.retry_once(study, trial)

    @staticmethod
    def retry_once(study: optuna.Study, trial: FrozenTrial) -> None:
        """Queue ``trial``'s params again (a WAITING trial that resumes from its checkpoint), unless
        it is itself a retry (a config that kills its worker twice is not tried a third time) or it
        had sampled nothing yet (a retry would be a new draw the run makes anyway)."""
        if not trial.params:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=1, inherit_intermediate_values=True)(study, trial)


def record_reason(storage: BaseStorage, trial_id: int, reason: str, cause: str = "lost_worker") -> None:
    """Write why a trial that already finished as FAIL failed (Optuna's own setters refuse
    finished trials): ``fail_reason`` (the cause) and ``hps:why`` (the line). Supported on RDB
    storages (the journal's workers are on one machine)."""
    backend = rdb_backend(storage)
    try:
        if backend is not None:
            from optuna.storages._rdb import models

            with backend.engine.begin() as conn:
                for model, key, value in ((models.TrialUserAttributeModel, FAIL_REASON, cause),
                                          (models.TrialSystemAttributeModel, WHY, reason)):
                    table = model.__table__
                    conn.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key == key))
                    conn.execute(table.insert().values(trial_id=trial_id, key=key, value_json=json.dumps(value)))
    except Exception as e:  # the retry matters more than the note
        warnings.warn(f"could not store why trial {trial_id} failed: {e}", stacklevel=2)


def fail_running(storage: BaseStorage, trial_id: int, why: str, cause: str) -> bool:
    """Move a RUNNING trial to FAIL with ``cause`` and ``why`` stored on it; False when it is no
    longer RUNNING (it finished, or another run failed it first). On a database the move comes
    first (atomic: a worker only late to report may still finish the trial), then the reason; on a
    journal file (no such claim; callers hold its lock) the reason first, then the move."""
    try:
        if rdb_backend(storage) is not None:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
            record_reason(storage, trial_id, why, cause)
            return True
        storage.set_trial_user_attr(trial_id, FAIL_REASON, cause)
        storage.set_trial_system_attr(trial_id, WHY, why)
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except Exception:  # it finished meanwhile (Optuna refuses writes to finished trials), or lost the database's lock
        return False


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind ``storage`` (Optuna wraps it in a cache), or None for other storages:
    for the few writes Optuna's API refuses on finished trials, and for closing connections."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


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
