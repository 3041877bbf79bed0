"""Optuna's JournalStorage on PostgreSQL with heartbeats: the storage for large clusters.

``journal+postgresql://user@host/db`` keeps every study operation as one row of an append-only
table (``hps_journal``). Each client replays the log into memory, so an ask/report/tell costs one
round trip (append, then read back what is new) instead of Optuna's ~46 ORM statements
per trial. An append takes a transaction-scoped advisory lock, numbers the logs after the last
one and inserts them: sequence numbers are gapless, every reader sees a prefix of one total
order, and the lock is never held across a client round trip. Each batch carries an id, so a
retry after a lost reply does not append it twice. Heartbeats (``hps_heartbeat``)
make a killed worker's trial FAIL and be retried, as with RDBStorage.

Durability: logs that create or finish trials and studies are committed synchronously (flushed
to disk before the call returns). Params, reports and trial attributes of a *running* trial are
committed without waiting for the flush (``synchronous_commit = off`` for that transaction):
the lock is then not held across an fsync, which would otherwise serialise every report of every
worker. PostgreSQL's WAL is a sequence, so the next synchronous commit (the trial's ``tell``)
makes all of them durable: a finished trial is never missing a param or a report. Only a crash
of the database server itself can lose the last ~0.6 s of reports of running trials; each
client then finds on reconnecting that the journal no longer holds the last log it read, and
stops with an error, so its trial turns FAIL through heartbeats and is retried. A clean restart
loses nothing.

Cost: every client replays every log, so the CPU spent on replay grows with the number of
clients times the trial rate. New clients start from a snapshot (``hps_journal_snapshot``, the
replayed state pickled every ~``SNAPSHOT_EVERY`` logs by whichever client gets there first)
instead of replaying the whole table. Optuna's own scheme (every client pickles its whole state
every 100 trials) cost more than it saved with many clients, and is bypassed.
"""

from __future__ import annotations

import json
import pickle
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import optuna
import psycopg2
import psycopg2.extensions
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.storages.journal._base import BaseJournalSnapshot
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

from search._env import connect_timeout

_LOCK_KEY = 0x6870735F6A726E  # "hps_jrn"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS hps_journal (seq BIGINT PRIMARY KEY, log TEXT NOT NULL);
ALTER TABLE hps_journal ADD COLUMN IF NOT EXISTS batch UUID UNIQUE;
CREATE TABLE IF NOT EXISTS hps_heartbeat (trial_id BIGINT PRIMARY KEY, beat DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS hps_journal_snapshot (id INT PRIMARY KEY, log_number BIGINT NOT NULL, data BYTEA NOT NULL);
DROP FUNCTION IF EXISTS hps_journal_append(TEXT[]);
CREATE OR REPLACE FUNCTION hps_journal_append(logs TEXT[], batch_id UUID, durable BOOLEAN) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE first BIGINT;
BEGIN
  IF NOT durable THEN
    PERFORM set_config('synchronous_commit', 'off', true);
  END IF;
  PERFORM pg_advisory_xact_lock({_LOCK_KEY});
  IF EXISTS (SELECT 1 FROM hps_journal WHERE batch = batch_id) THEN
    RETURN;  -- a retry of a batch whose commit's reply was lost: appended once already
  END IF;
  SELECT coalesce(max(seq) + 1, 0) INTO first FROM hps_journal;
  INSERT INTO hps_journal (seq, log, batch)
    SELECT first + i - 1, l, CASE WHEN i = 1 THEN batch_id END FROM unnest(logs) WITH ORDINALITY AS t(l, i);
END $$;
"""
SNAPSHOT_EVERY = 20_000  # logs (about 3,000 trials)
# Logs that only touch a running trial: committed without waiting for the disk (see above).
_LAZY_OPS = frozenset({JournalOperation.SET_TRIAL_PARAM, JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
                       JournalOperation.SET_TRIAL_USER_ATTR, JournalOperation.SET_TRIAL_SYSTEM_ATTR})


class JournalDiverged(RuntimeError):
    """The database lost logs this client had already read (a crash of the database server)."""


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
        self._last: tuple[int, str] | None = None  # the last log read: (seq, text), checked after a reconnect
        self._reconnected = False
        with self._cursor() as cur:  # create or upgrade the tables once, not on every client start
            cur.execute("SELECT to_regprocedure('hps_journal_append(text[],uuid,boolean)') IS NOT NULL AND "
                        "to_regclass('hps_journal') IS NOT NULL AND to_regclass('hps_heartbeat') IS NOT NULL AND "
                        "to_regclass('hps_journal_snapshot') IS NOT NULL")
            if cur.fetchone()[0]:
                return
            cur.execute("BEGIN")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute(_SCHEMA)
            cur.execute("COMMIT")

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self._dsn, application_name="hps", connect_timeout=connect_timeout())
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
                    if self._reconnected:
                        self._check_not_diverged(cur)
                    return fn(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._conn = None
                self._reconnected = True
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _check_not_diverged(self, cur: Any) -> None:
        if self._last is not None:
            cur.execute("SELECT log FROM hps_journal WHERE seq = %s", (self._last[0],))
            row = cur.fetchone()
            if row is None or row[0] != self._last[1]:
                raise JournalDiverged("the journal lost logs this worker had read (did the database server crash?); "
                                      "this worker stops and its trial is retried")
        self._reconnected = False

    def _decode(self, log_number_from: int, texts: list[str]) -> list[dict[str, Any]]:
        if texts:
            self._last = (log_number_from + len(texts) - 1, texts[-1])
        return [json.loads(t) for t in texts]

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        def q(cur: Any) -> list[str]:
            cur.execute("SELECT log FROM hps_journal WHERE seq >= %s ORDER BY seq", (log_number_from,))
            return [row[0] for row in cur.fetchall()]

        return self._decode(log_number_from, self._run(q))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.append_and_read(logs, log_number_from=None)

    def append_and_read(self, logs: list[dict[str, Any]], log_number_from: int | None) -> list[dict[str, Any]]:
        """Append ``logs`` and return every log from ``log_number_from`` on, in one round trip (the
        read runs after the commit, so the append lock is not held while the logs are sent)."""
        texts = [json.dumps(log) for log in logs]
        batch = str(uuid.uuid4())  # the same on a retry: a batch is appended at most once
        durable = any(log["op_code"] not in _LAZY_OPS for log in logs)
        read_from = (1 << 62) if log_number_from is None else log_number_from

        def q(cur: Any) -> list[str]:
            cur.execute("BEGIN; SELECT hps_journal_append(%s::text[], %s::uuid, %s); COMMIT; "
                        "SELECT log FROM hps_journal WHERE seq >= %s ORDER BY seq", (texts, batch, durable, read_from))
            return [row[0] for row in cur.fetchall()]

        out = self._run(q)
        return [] if log_number_from is None else self._decode(log_number_from, out)

    # snapshots: a new client loads the replayed state and reads only the logs after it
    def snapshot_number(self) -> int:
        """How many logs the stored snapshot holds (0: none)."""
        def q(cur: Any) -> int:
            cur.execute("SELECT log_number FROM hps_journal_snapshot WHERE id = 1")
            row = cur.fetchone()
            return 0 if row is None else int(row[0])

        return self._run(q)

    def save_snapshot(self, log_number: int, snapshot: bytes) -> None:
        """Store ``snapshot`` unless a newer one is there already."""
        self._run(lambda cur: cur.execute(
            "INSERT INTO hps_journal_snapshot (id, log_number, data) VALUES (1, %s, %s) ON CONFLICT (id) DO UPDATE "
            "SET log_number = excluded.log_number, data = excluded.data "
            "WHERE hps_journal_snapshot.log_number < excluded.log_number", (log_number, psycopg2.Binary(snapshot))))

    def load_snapshot(self) -> bytes | None:
        def q(cur: Any) -> bytes | None:
            cur.execute("SELECT data FROM hps_journal_snapshot WHERE id = 1")
            row = cur.fetchone()
            return None if row is None else bytes(row[0])

        return self._run(q)

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


class _SnapshotLoader(BaseJournalBackend, BaseJournalSnapshot):
    """What Optuna's JournalStorage constructor sees: our backend, plus the stored snapshot."""

    def __init__(self, backend: PostgresJournalBackend) -> None:
        self.backend = backend

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self.backend.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.backend.append_logs(logs)

    def load_snapshot(self) -> bytes | None:
        return self.backend.load_snapshot()

    def save_snapshot(self, snapshot: bytes) -> None:  # never called: replaced right after the constructor
        pass


class PostgresJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage over :class:`PostgresJournalBackend`, with Optuna's heartbeat protocol."""

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        self.backend = PostgresJournalBackend(url)
        self._pending: list[dict[str, Any]] = []
        self._next_snapshot = 1 << 62
        super().__init__(_SnapshotLoader(self.backend))  # starts from the stored snapshot...
        self._backend = self.backend  # ...and Optuna's own snapshot saving stays off
        self._next_snapshot = self._snapshot_due(self.backend.snapshot_number())
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
        self.stale_callback = heartbeat_stale_trial_callback

    # Optuna syncs right after every write: both go to the database in one round trip.
    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        self._flush()
        self._pending = [{"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields}]

    def _sync_with_backend(self) -> None:
        if self._pending:
            logs, self._pending = self._pending, []
            self._replay_result.apply_logs(self.backend.append_and_read(logs, self._replay_result.log_number_read))
        else:
            super()._sync_with_backend()
        if self._replay_result.log_number_read >= self._next_snapshot:
            self._snapshot()

    @staticmethod
    def _snapshot_due(stored: int) -> int:
        return stored + int(SNAPSHOT_EVERY * (1 + random.random()))  # jitter: one client of many saves it

    def _snapshot(self) -> None:
        stored = self.backend.snapshot_number()
        number = self._replay_result.log_number_read
        if stored + SNAPSHOT_EVERY <= number:
            self.backend.save_snapshot(number, pickle.dumps(self._replay_result))
            stored = number
        self._next_snapshot = self._snapshot_due(stored)

    def _flush(self) -> None:
        if self._pending:
            self._sync_with_backend()

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
