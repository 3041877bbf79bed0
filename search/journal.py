"""Optuna's JournalStorage on PostgreSQL with heartbeats: the storage for large clusters.

``journal+postgresql://user@host/db`` keeps every study operation as one row of an append-only
table (``hps_journal``). Each client replays the log into memory, so an ask/report/tell costs one
append and one incremental SELECT instead of Optuna's ~46 ORM statements per trial. An append is
one call of a server-side function that takes a transaction-scoped advisory lock, numbers the
logs after the last one and inserts them: sequence numbers are gapless, every reader sees a
prefix of one total order, and the lock is never held across a client round trip. Heartbeats
(``hps_heartbeat``) make a killed worker's trial FAIL and be retried, as with RDBStorage.

Cost: every client replays every log (ask, params, reports, tell of all trials of all studies in
the table), so the CPU spent on replay grows with the number of clients times the trial rate.

Durability is PostgreSQL's: rows are committed before ``append_logs`` returns.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import optuna
import psycopg2
import psycopg2.extensions
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

_LOCK_KEY = 0x6870735F6A726E  # "hps_jrn"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS hps_journal (seq BIGINT PRIMARY KEY, log TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hps_heartbeat (trial_id BIGINT PRIMARY KEY, beat DOUBLE PRECISION NOT NULL);
CREATE OR REPLACE FUNCTION hps_journal_append(logs TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE first BIGINT;
BEGIN
  PERFORM pg_advisory_xact_lock({_LOCK_KEY});
  SELECT coalesce(max(seq) + 1, 0) INTO first FROM hps_journal;
  INSERT INTO hps_journal (seq, log) SELECT first + i - 1, l FROM unnest(logs) WITH ORDINALITY AS t(l, i);
END $$;
"""


def dsn(url: str) -> str:
    """``journal+postgresql[+psycopg2]://...`` -> a libpq URL."""
    rest = url.split("://", 1)[1]
    return "postgresql://" + rest


class PostgresJournalBackend(BaseJournalBackend):
    """One connection per process (guarded by a lock: Optuna's heartbeat thread shares it)."""

    def __init__(self, url: str) -> None:
        self._dsn = dsn(url)
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute(_SCHEMA)
            cur.execute("COMMIT")

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self._dsn, application_name="hps")
            self._conn.autocommit = True  # every statement is its own transaction: one round trip
        return self._conn

    def _cursor(self) -> Any:
        backend = self

        class _Tx:
            def __enter__(self) -> Any:
                backend._lock.acquire()
                try:
                    self.conn = backend._with_retry(backend._connect)
                    self.cur = self.conn.cursor()
                except BaseException:
                    backend._lock.release()
                    raise
                return self.cur

            def __exit__(self, exc_type: Any, *exc: Any) -> None:
                try:
                    if exc_type is not None and not self.conn.closed and self.conn.status != psycopg2.extensions.STATUS_READY:
                        self.conn.rollback()
                except psycopg2.Error:
                    backend._conn = None
                finally:
                    self.cur.close()
                    backend._lock.release()

        return _Tx()

    @staticmethod
    def _with_retry(fn: Callable[[], Any], attempts: int = 30) -> Any:
        for i in range(attempts):
            try:
                return fn()
            except psycopg2.OperationalError:  # the database restarts: wait for it
                if i == attempts - 1:
                    raise
                time.sleep(min(0.2 * 2**i, 2.0))
        raise AssertionError("unreachable")

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(cursor)`` in a transaction, reconnecting once if the connection broke."""
        for attempt in range(2):
            try:
                with self._cursor() as cur:
                    return fn(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        def q(cur: Any) -> list[dict[str, Any]]:
            cur.execute("SELECT log FROM hps_journal WHERE seq >= %s ORDER BY seq", (log_number_from,))
            return [json.loads(row[0]) for row in cur.fetchall()]

        return self._run(q)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        texts = [json.dumps(log) for log in logs]
        self._run(lambda cur: cur.execute("SELECT hps_journal_append(%s::text[])", (texts,)))

    # heartbeats
    def beat(self, trial_id: int) -> None:
        self._run(lambda cur: cur.execute(
            "INSERT INTO hps_heartbeat (trial_id, beat) VALUES (%s, extract(epoch from now())) "
            "ON CONFLICT (trial_id) DO UPDATE SET beat = excluded.beat", (trial_id,)))

    def beats(self, trial_ids: list[int]) -> dict[int, float]:
        def q(cur: Any) -> dict[int, float]:
            cur.execute("SELECT trial_id, extract(epoch from now()) - beat FROM hps_heartbeat WHERE trial_id = ANY(%s)",
                        (trial_ids,))
            return {int(t): float(age) for t, age in cur.fetchall()}

        return self._run(q) if trial_ids else {}

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()


class PostgresJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage over :class:`PostgresJournalBackend`, with Optuna's heartbeat protocol."""

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        self.backend = PostgresJournalBackend(url)
        super().__init__(self.backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
        self.stale_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.backend.beat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.grace_period is not None
        running = [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))]
        ages = self.backend.beats(running)
        return [t for t in running if t in ages and ages[t] > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback


def is_journal(url: str) -> bool:
    return url.startswith("journal+postgresql")
