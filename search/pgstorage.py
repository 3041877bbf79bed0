"""hps's storage for clusters: studies and trials as rows in PostgreSQL, one statement an operation.

``hps+postgresql://user@host/db``. Every write is one SQL statement (one round trip, committed
before it returns) on one connection per process, and it returns the trial's row, so the
client's copy of its own trial is the stored one. Reading a study's trials fetches only the rows
changed since this client's last read: each row holds the id of the transaction that last changed
it (``changed``), and a reader keeps the oldest transaction still running when it last read (its
snapshot's xmin), so a change that commits late is read next time, never skipped. (A transaction
left open elsewhere in the database holds that xmin back: reads stay correct, only larger.)
Clients never replay each other's writes (the journal's limit): a write costs the same with 8 or
64 workers, and a sampler that reads the whole study reads each changed trial once. Waiting
(enqueued) trials are read with their own indexed query, so ``study.ask()`` reads no other trial
unless the sampler asks for them.

Retries: a statement that fails on a broken connection (a database restart) is sent again on a
new one, up to ~1 minute; the first connection is not retried, so a wrong URL fails at once.
The writes that are not idempotent by themselves carry an id: creating a trial (``token``) and
changing its state (``claim``), so a retry whose first attempt had committed finds its own work
instead of doing it twice or calling it someone else's.
Heartbeats (``heartbeat``) make a killed worker's trial FAIL and be retried, as with RDBStorage.

Tables: ``hps_studies``, ``hps_trials`` and ``hps_params`` (the distribution each parameter
name has in a study: a later trial must use a compatible one, as Optuna's storages require).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
import psycopg2
import psycopg2.errors
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json, json_to_distribution
from optuna.exceptions import DuplicatedStudyError, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from search._env import connect_timeout

_LOCK_KEY = 0x6870735F746162  # "hps_tab": creating the schema
_SCHEMA = """
CREATE TABLE IF NOT EXISTS hps_studies (
  study_id SERIAL PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  directions SMALLINT[] NOT NULL,
  user_attrs JSONB NOT NULL DEFAULT '{}',    -- key -> the value's JSON text
  system_attrs JSONB NOT NULL DEFAULT '{}',
  next_number INT NOT NULL DEFAULT 0);       -- the next trial's number
CREATE TABLE IF NOT EXISTS hps_params (
  study_id INT NOT NULL REFERENCES hps_studies ON DELETE CASCADE,
  name TEXT NOT NULL,
  distribution TEXT NOT NULL,
  PRIMARY KEY (study_id, name));
CREATE TABLE IF NOT EXISTS hps_trials (
  trial_id BIGSERIAL PRIMARY KEY,
  study_id INT NOT NULL REFERENCES hps_studies ON DELETE CASCADE,
  number INT NOT NULL,
  state SMALLINT NOT NULL,                   -- optuna.trial.TrialState
  trial_values FLOAT8[],
  params JSONB NOT NULL DEFAULT '[]',        -- [[name, internal value, distribution JSON], ...] in order
  intermediate JSONB NOT NULL DEFAULT '{}',  -- step -> value (non-finite values as strings)
  user_attrs JSONB NOT NULL DEFAULT '{}',    -- key -> the value's JSON text
  system_attrs JSONB NOT NULL DEFAULT '{}',
  datetime_start TIMESTAMP,
  datetime_complete TIMESTAMP,
  heartbeat TIMESTAMPTZ,
  token UUID NOT NULL UNIQUE,                -- the operation that created the row
  claim UUID,                                -- the operation that last changed its state
  changed XID8 NOT NULL DEFAULT pg_current_xact_id(),
  UNIQUE (study_id, number));
CREATE INDEX IF NOT EXISTS hps_trials_changed ON hps_trials (study_id, changed);
CREATE INDEX IF NOT EXISTS hps_trials_waiting ON hps_trials (study_id) WHERE state = 4;
CREATE INDEX IF NOT EXISTS hps_trials_running ON hps_trials (study_id) WHERE state = 0;
"""
_COLS = ("trial_id, number, state, trial_values, datetime_start, datetime_complete, params, intermediate, "
         "user_attrs, system_attrs")
_RUNNING, _WAITING = TrialState.RUNNING.value, TrialState.WAITING.value
_UNFINISHED = (_RUNNING, _WAITING)
RETRY_SECONDS = 60.0  # how long an operation waits for the database to come back


def dsn(url: str) -> str:
    """``hps+postgresql[+psycopg2]://...`` -> a libpq URL."""
    return "postgresql://" + url.split("://", 1)[1]


def is_pgstorage(url: str) -> bool:
    return url.startswith("hps+postgresql")


@functools.lru_cache(maxsize=4096)
def _distribution(text: str) -> BaseDistribution:
    return json_to_distribution(text)


def _number(v: float) -> float | str:
    """A float as JSON allows it: non-finite values as the strings ``float()`` reads back."""
    return v if math.isfinite(v) else str(v)


def _attrs(d: dict[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in d.items()}


def _trial(row: Sequence[Any]) -> FrozenTrial:
    trial_id, number, state, values, start, complete, params, intermediate, user_attrs, system_attrs = row
    dists = {name: _distribution(d) for name, _, d in params}
    return FrozenTrial(number=number, state=TrialState(state), value=None, values=values, datetime_start=start,
                       datetime_complete=complete,
                       params={name: dists[name].to_external_repr(v) for name, v, _ in params}, distributions=dists,
                       user_attrs=_attrs(user_attrs), system_attrs=_attrs(system_attrs),
                       intermediate_values={int(k): float(v) for k, v in intermediate.items()}, trial_id=trial_id)


@dataclass
class _Study:
    """What this client has read of one study: every trial by number, and where to read on from."""

    trials: dict[int, FrozenTrial] = field(default_factory=dict)
    xmin: int = 0  # the xmin of the last read's snapshot: later changes have ids >= it
    params: dict[str, BaseDistribution] = field(default_factory=dict)


class PostgresStorage(BaseStorage, BaseHeartbeat):
    """Optuna's storage interface on three PostgreSQL tables, with heartbeats."""

    def __init__(self, url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        self._dsn = dsn(url)
        self._lock = threading.RLock()  # one connection, shared with Optuna's heartbeat thread
        self._conn: Any = None
        self._connected = False  # once it has been, a lost connection is waited for
        self._studies: dict[int, _Study] = {}
        self._where: dict[int, tuple[int, int]] = {}  # trial_id -> (study_id, number)
        self._owned: set[int] = set()  # running trials this client runs: its copy is the stored one
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or (2 * heartbeat_interval if heartbeat_interval else None)
        self.stale_callback = heartbeat_stale_trial_callback
        ready = self._query("SELECT to_regclass('hps_trials') IS NOT NULL AND to_regclass('hps_params') IS NOT NULL")
        if not ready[0][0]:
            self._query(f"BEGIN; SELECT pg_advisory_xact_lock({_LOCK_KEY}); {_SCHEMA} COMMIT")

    # the connection
    def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows. A broken connection is replaced
        and the statement sent again until ``RETRY_SECONDS`` have passed. The first connection
        is not retried: a wrong URL is reported at once."""
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.1
        with self._lock:
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg2.connect(self._dsn, application_name="hps", connect_timeout=connect_timeout())
                        self._conn.autocommit = True
                        self._connected = True
                    with self._conn.cursor() as cur:
                        cur.execute(sql, args)
                        return cur.fetchall() if cur.description else []
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                    self.close()
                    if not self._connected or time.monotonic() > deadline:
                        raise StorageInternalError(f"PostgreSQL unreachable: {str(e).strip().splitlines()[0]}") from e
                    time.sleep(delay)
                    delay = min(2 * delay, 2.0)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.close()
            self._conn = None

    # studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        name = study_name or f"{optuna.storages._base.DEFAULT_STUDY_NAME_PREFIX}{uuid.uuid4()}"
        try:
            rows = self._query("INSERT INTO hps_studies (name, directions) VALUES (%s, %s) RETURNING study_id",
                               (name, [int(d) for d in directions]))
        except psycopg2.errors.UniqueViolation:
            raise DuplicatedStudyError(f"Another study with name '{name}' already exists.") from None
        return int(rows[0][0])

    def delete_study(self, study_id: int) -> None:
        if not self._query("DELETE FROM hps_studies WHERE study_id = %s RETURNING 1", (study_id,)):
            raise KeyError(f"No study with study_id {study_id} exists.")
        with self._lock:
            self._studies.pop(study_id, None)

    def _set_study_attr(self, column: str, study_id: int, key: str, value: Any) -> None:
        if not self._query(f"UPDATE hps_studies SET {column} = {column} || jsonb_build_object(%s, %s::text) "
                           "WHERE study_id = %s RETURNING 1", (key, json.dumps(value), study_id)):
            raise KeyError(f"No study with study_id {study_id} exists.")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("user_attrs", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("system_attrs", study_id, key, value)

    def _study_row(self, column: str, key: str, value: Any) -> Any:
        rows = self._query(f"SELECT {column} FROM hps_studies WHERE {key} = %s", (value,))
        if not rows:
            raise KeyError(f"No study with {key} {value!r} exists.")
        return rows[0][0]

    def get_study_id_from_name(self, study_name: str) -> int:
        return int(self._study_row("study_id", "name", study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return str(self._study_row("name", "study_id", study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return [StudyDirection(d) for d in self._study_row("directions", "study_id", study_id)]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return _attrs(self._study_row("user_attrs", "study_id", study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return _attrs(self._study_row("system_attrs", "study_id", study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        rows = self._query("SELECT study_id, name, directions, user_attrs, system_attrs FROM hps_studies ORDER BY study_id")
        return [FrozenStudy(study_name=name, direction=None, directions=[StudyDirection(d) for d in dirs],
                            user_attrs=_attrs(ua), system_attrs=_attrs(sa), study_id=sid)
                for sid, name, dirs, ua, sa in rows]

    # trials: writes
    def _keep(self, study_id: int, row: Sequence[Any]) -> FrozenTrial:
        """Cache a row read or written (the caller holds the lock)."""
        trial = _trial(row)
        self._studies.setdefault(study_id, _Study()).trials[trial.number] = trial
        self._where[trial._trial_id] = (study_id, trial.number)
        return trial

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        t = template_trial
        state = TrialState.RUNNING if t is None else t.state
        token = str(uuid.uuid4())  # the same on a retry: the trial is created once
        args = {
            "study": study_id, "token": token, "state": state.value,
            "values": None if t is None else t.values,
            "start": datetime.now() if t is None else t.datetime_start,
            "complete": None if t is None else t.datetime_complete,
            "params": json.dumps([] if t is None else [
                [name, d.to_internal_repr(t.params[name]), distribution_to_json(d)] for name, d in t.distributions.items()]),
            "intermediate": json.dumps({} if t is None else {str(k): _number(v) for k, v in t.intermediate_values.items()}),
            "user": json.dumps({} if t is None else {k: json.dumps(v) for k, v in t.user_attrs.items()}),
            "system": json.dumps({} if t is None else {k: json.dumps(v) for k, v in t.system_attrs.items()}),
        }
        if t is not None:
            for name, d in t.distributions.items():
                self._check_distribution(study_id, name, d)
        rows = self._query(f"""
            WITH prev AS (SELECT {_COLS} FROM hps_trials WHERE token = %(token)s),
            n AS (UPDATE hps_studies SET next_number = next_number + 1
                  WHERE study_id = %(study)s AND NOT EXISTS (SELECT 1 FROM prev) RETURNING next_number - 1 AS number),
            ins AS (INSERT INTO hps_trials (study_id, number, state, trial_values, datetime_start, datetime_complete,
                                            params, intermediate, user_attrs, system_attrs, token, claim)
                    SELECT %(study)s, number, %(state)s, %(values)s, %(start)s, %(complete)s, %(params)s::jsonb,
                           %(intermediate)s::jsonb, %(user)s::jsonb, %(system)s::jsonb, %(token)s, %(token)s FROM n
                    RETURNING {_COLS})
            SELECT * FROM ins UNION ALL SELECT * FROM prev""", args)
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        with self._lock:
            trial = self._keep(study_id, rows[0])
            if state == TrialState.RUNNING:
                self._owned.add(trial._trial_id)
        return trial._trial_id

    def _update(self, trial_id: int, assignments: str, args: dict[str, Any]) -> FrozenTrial:
        """Change an unfinished trial in one statement; its row comes back into the cache."""
        rows = self._query(f"UPDATE hps_trials SET {assignments}, changed = pg_current_xact_id() "
                           f"WHERE trial_id = %(id)s AND state IN {_UNFINISHED} RETURNING study_id, {_COLS}",
                           {"id": trial_id, **args})
        if not rows:
            self._raise_not_updatable(trial_id)
        with self._lock:
            return self._keep(rows[0][0], rows[0][1:])

    def record_reason(self, trial_id: int, key: str, value: str) -> None:
        """A user attr on a trial that has already finished: why a lost worker's trial failed."""
        self._query("UPDATE hps_trials SET user_attrs = user_attrs || jsonb_build_object(%(k)s, %(v)s::text), "
                    "changed = pg_current_xact_id() WHERE trial_id = %(id)s RETURNING trial_id",
                    {"id": trial_id, "k": key, "v": json.dumps(value)})

    def _raise_not_updatable(self, trial_id: int) -> None:
        rows = self._query("SELECT number, state FROM hps_trials WHERE trial_id = %s", (trial_id,))
        if not rows:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        raise UpdateFinishedTrialError(f"Trial#{rows[0][0]} has already finished and can not be updated.")

    def _check_distribution(self, study_id: int, name: str, distribution: BaseDistribution) -> None:
        """A parameter keeps a compatible distribution across a study's trials (read once a name)."""
        with self._lock:
            known = self._studies.setdefault(study_id, _Study()).params.get(name)
        if known is None:
            rows: list[tuple[Any, ...]] = []
            while not rows:  # empty when another client's insert of the name committed during ours: read again
                rows = self._query("WITH ins AS (INSERT INTO hps_params VALUES (%(s)s, %(n)s, %(d)s) ON CONFLICT DO NOTHING "
                                   "RETURNING distribution) SELECT distribution FROM ins UNION ALL "
                                   "SELECT distribution FROM hps_params WHERE study_id = %(s)s AND name = %(n)s",
                                   {"s": study_id, "n": name, "d": distribution_to_json(distribution)})
            known = _distribution(rows[0][0])
            with self._lock:
                self._studies[study_id].params[name] = known
        check_distribution_compatibility(known, distribution)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            where = self._where.get(trial_id)
        study_id = where[0] if where else int(self._query("SELECT study_id FROM hps_trials WHERE trial_id = %s",
                                                          (trial_id,))[0][0])
        self._check_distribution(study_id, param_name, distribution)
        entry = json.dumps([[param_name, param_value_internal, distribution_to_json(distribution)]])
        self._update(trial_id, "params = params || %(p)s::jsonb", {"p": entry})

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """RUNNING takes a WAITING trial (False if another client took it first); a finished state
        ends an unfinished trial. ``claim`` lets a retry whose first attempt committed know it."""
        now = datetime.now()
        rows = self._query(f"""
            UPDATE hps_trials SET state = %(state)s, trial_values = %(values)s, claim = %(claim)s,
                   datetime_start = CASE WHEN %(running)s THEN %(now)s ELSE datetime_start END,
                   datetime_complete = CASE WHEN %(running)s THEN NULL ELSE %(now)s END,
                   changed = pg_current_xact_id()
            WHERE trial_id = %(id)s AND (claim = %(claim)s OR state = ANY(%(from)s)) RETURNING study_id, {_COLS}""",
            {"id": trial_id, "state": state.value, "values": None if values is None else list(values),
             "claim": str(uuid.uuid4()), "running": state == TrialState.RUNNING, "now": now,
             "from": [_WAITING] if state == TrialState.RUNNING else list(_UNFINISHED)})
        if not rows:
            if state == TrialState.RUNNING and self._query("SELECT 1 FROM hps_trials WHERE trial_id = %s AND state = %s",
                                                          (trial_id, _RUNNING)):
                return False
            self._raise_not_updatable(trial_id)
        with self._lock:
            self._keep(rows[0][0], rows[0][1:])
            if state == TrialState.RUNNING:
                self._owned.add(trial_id)
            else:
                self._owned.discard(trial_id)
        return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._update(trial_id, "intermediate = intermediate || jsonb_build_object(%(step)s::text, to_jsonb(%(v)s::float8))",
                     {"step": step, "v": intermediate_value})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._update(trial_id, "user_attrs = user_attrs || jsonb_build_object(%(k)s, %(v)s::text)",
                     {"k": key, "v": json.dumps(value)})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._update(trial_id, "system_attrs = system_attrs || jsonb_build_object(%(k)s, %(v)s::text)",
                     {"k": key, "v": json.dumps(value)})

    # trials: reads
    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            where = self._where.get(trial_id)
            if where is not None:
                trial = self._studies[where[0]].trials[where[1]]
                if trial.state.is_finished() or trial_id in self._owned:
                    return trial
        rows = self._query(f"SELECT study_id, {_COLS} FROM hps_trials WHERE trial_id = %s", (trial_id,))
        if not rows:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        with self._lock:
            return self._keep(rows[0][0], rows[0][1:])

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        rows = self._query("SELECT trial_id FROM hps_trials WHERE study_id = %s AND number = %s", (study_id, trial_number))
        if not rows:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with study_id {study_id}.")
        return int(rows[0][0])

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is not None and [s for s in TrialState if s in states] == [TrialState.WAITING]:
            trials = self._waiting(study_id)  # the queue, read alone: ask() reads no other trial
        else:
            trials = self._read_changes(study_id)
            if states is not None:
                trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _waiting(self, study_id: int) -> list[FrozenTrial]:
        rows = self._query(f"SELECT t.* FROM hps_studies s LEFT JOIN LATERAL (SELECT {_COLS} FROM hps_trials "
                           "WHERE study_id = s.study_id AND state = %s ORDER BY number) t ON true WHERE s.study_id = %s",
                           (_WAITING, study_id))
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        with self._lock:
            return [self._keep(study_id, row) for row in rows if row[0] is not None]

    def _read_changes(self, study_id: int) -> list[FrozenTrial]:
        """Fetch the rows changed since this client's last read, then return the whole study."""
        with self._lock:
            since = self._studies.get(study_id, _Study()).xmin
        rows = self._query(f"""
            WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
                              EXISTS (SELECT 1 FROM hps_studies WHERE study_id = %(s)s) AS found)
            SELECT s.xmin, s.found, t.* FROM s LEFT JOIN LATERAL (
              SELECT {_COLS} FROM hps_trials WHERE study_id = %(s)s AND changed >= %(since)s::text::xid8) t ON true""",
            {"s": study_id, "since": since})
        if not rows[0][1]:
            raise KeyError(f"No study with study_id {study_id} exists.")
        with self._lock:
            study = self._studies.setdefault(study_id, _Study())
            for row in rows:
                if row[2] is not None:
                    self._keep(study_id, row[2:])
            study.xmin = max(study.xmin, int(rows[0][0]))
            return sorted(study.trials.values(), key=lambda t: t.number)

    # heartbeats
    def record_heartbeat(self, trial_id: int) -> None:
        self._query("UPDATE hps_trials SET heartbeat = now() WHERE trial_id = %s", (trial_id,))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.grace_period is not None
        rows = self._query("SELECT trial_id FROM hps_trials WHERE study_id = %s AND state = %s "
                           "AND heartbeat < now() - make_interval(secs => %s)", (study_id, _RUNNING, self.grace_period))
        return [int(r[0]) for r in rows]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_callback
