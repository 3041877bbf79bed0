"""The one place that touches Optuna's private internals (checked against Optuna 5.0).

Optuna has no public name for: a study's storage and id (``study._storage``, ``study._study_id``),
whether a storage beats (``optuna.storages._heartbeat``), which trials are stale
(``_get_stale_trial_ids``), the RDB tables (``optuna.storages._rdb.models``: the only way to write
an attribute on a finished trial, which Optuna's setters refuse), the RDB storage behind Optuna's
cache (``_CachedStorage._backend``) and a journal file's path (``JournalFileBackend._file_path``).
Everything else in hps uses these functions, so an Optuna upgrade is checked here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled  # no public name in Optuna 5.0


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (Optuna's cache over the RDB storage, or the journal)."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of a study (or of a study summary, a ``FrozenStudy``)."""
    return study._study_id


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attrs (Optuna 5 has no ``Study.system_attrs``)."""
    return study._storage.get_study_system_attrs(study._study_id)


def trial_system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attrs (Optuna 5's ``Trial`` has no ``system_attrs``)."""
    return trial.storage.get_trial_system_attrs(trial._trial_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def heartbeat_on(storage: BaseStorage) -> bool:
    return is_heartbeat_enabled(storage)


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the grace period (none without heartbeats)."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind ``storage`` (Optuna wraps it in a cache), or None for other storages."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def journal_path(storage: BaseStorage) -> str | None:
    """The file of a JournalFileBackend storage, else None."""
    return getattr(getattr(storage, "_backend", None), "_file_path", None)


def rewrite_attrs(storage: BaseStorage, trial_id: int, *, user: Mapping[str, Any] | None = None,
                  system: Mapping[str, Any] | None = None, drop_user: Iterable[str] = (),
                  drop_system: Iterable[str] = ()) -> bool:
    """Set (``user``, ``system``) and delete (``drop_*``) attributes of a trial in one transaction,
    finished or not (Optuna's setters refuse finished trials and have no delete). RDB storages
    only: returns False elsewhere (the caller then uses Optuna's setters while the trial runs)."""
    backend = rdb_backend(storage)
    if backend is None:
        return False
    from optuna.storages._rdb import models

    tables = ((models.TrialUserAttributeModel.__table__, dict(user or {}), set(drop_user)),
              (models.TrialSystemAttributeModel.__table__, dict(system or {}), set(drop_system)))
    with backend.engine.begin() as conn:
        for table, values, dropped in tables:
            for key in dropped | set(values):
                conn.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key == key))
            for key, value in values.items():
                conn.execute(table.insert().values(trial_id=trial_id, key=key, value_json=json.dumps(value)))
    return True


class LiveAwareRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose stale trials exclude those ``alive(storage, trial_id)`` says are
    still being run: Optuna's own ``fail_stale_trials`` (inside every ``study.optimize``) then never
    fails a trial whose worker is seen alive, however late its heartbeat. Its heartbeats outlive
    a database outage."""

    def __init__(self, url: str, *, alive: Callable[[BaseStorage, int], bool], **kw: Any) -> None:
        super().__init__(url, **kw)
        self._alive = alive

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return [t for t in super()._get_stale_trial_ids(study_id) if not self._alive(self, t)]

    def record_heartbeat(self, trial_id: int) -> None:
        """A beat that meets no database is skipped: Optuna's heartbeat thread died of it (with a
        traceback on the terminal) and beat no more for the trial once the database was back."""
        import sqlalchemy.exc

        with contextlib.suppress(sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                                 optuna.exceptions.StorageInternalError):
            super().record_heartbeat(trial_id)


def running_trial_attrs(storage: BaseStorage, key: str) -> list[tuple[int, Any]]:
    """(trial id, value) of system attr ``key`` on every RUNNING trial in the database (RDB only)."""
    backend = rdb_backend(storage)
    if backend is None:
        return []
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    from sqlalchemy import select

    trials, attrs = models.TrialModel.__table__, models.TrialSystemAttributeModel.__table__
    query = (select(attrs.c.trial_id, attrs.c.value_json).join(trials, trials.c.trial_id == attrs.c.trial_id)
             .where(trials.c.state == TrialState.RUNNING, attrs.c.key == key))
    with backend.engine.connect() as conn:
        return [(int(tid), json.loads(value)) for tid, value in conn.execute(query)]
