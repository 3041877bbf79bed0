"""A trial's life after Optuna starts it, in one place: who runs it (:func:`identity`), whether
that worker is gone (:func:`gone`) or seen alive (:func:`seen_alive`), settling trials whose
worker is lost (:func:`settle`), failing a trial with its reason and owing its params once more
(:func:`fail_and_owe`), the reasons an interrupt writes (:func:`interrupt_reason`) and Optuna's
stale-trial callback (:class:`LostWorker`).

A retry (:func:`owe`) is a WAITING trial with the original's params and curve, pointing to it
(``failed_trial``, ``retry_history``) and nothing else: it carries no reason, worker or
checkpoint of the original's, so what it records is what happened to it. A late heartbeat alone
never fails a trial whose worker is seen alive (:func:`still_running`, the storage's filter).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from hps.search.errors import TERMINATING, Terminated
from hps.search.optuna_compat import journal_path, rewrite_attrs, stale_trial_ids, storage_of
from hps.search.record import (
    FAIL_REASON,
    RECHECK_OF,
    RETRY_HISTORY,
    RETRY_OF,
    WHY,
    WORKER,
    set_reason,
    trial_info,
)
from hps.search.settings import settings

NEVER_STARTED_AFTER = 60  # seconds: a worker records itself on its trial within milliseconds of asking for it
INTERRUPT_CAUSES = ("interrupted", "terminated")
OWN_TRIAL_LOST = "storage_outage"


# --- who runs a trial ---------------------------------------------------------------------------

def new_run() -> str:
    """A run's id: every trial its workers start carries it (``hps:worker``), so the run can find
    the trials it left RUNNING (a Ray worker killed under it) and owe exactly those."""
    return uuid.uuid4().hex[:12]


def identity(run: str = "", **extra: Any) -> dict[str, Any]:
    """Who runs a trial, stored on it as ``hps:worker``: the machine (host name and boot), the process
    (pid and its start time) and the run. A later run on the same machine can then tell that the
    process is gone (:func:`gone`) without waiting for heartbeats, which journal files do not have."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "started": _started(pid), "run": run, **extra}


@cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None  # not Linux: processes are never judged gone, heartbeats decide


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (a reused pid has another), or None if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _here(worker: Any) -> bool:
    """The worker ran on this machine since its last boot (its process can be looked at)."""
    return (isinstance(worker, dict) and worker.get("boot") is not None and "pid" in worker
            and worker.get("host") == socket.gethostname() and worker["boot"] == _boot_id())


def gone(worker: Any) -> bool:
    """The process that ran a trial has ended: it ran on this machine (same host name and boot) and
    its pid runs no more, or runs another process. A worker on another machine is never judged here."""
    if not _here(worker):
        return False
    started = _started(int(worker["pid"]))
    return started is None or (worker.get("started") is not None and started != worker["started"])


def seen_alive(worker: Any) -> bool:
    """The process that runs a trial is seen running: on this machine, its pid with its start time;
    on another, its Ray actor alive in that same process (from a process connected to the cluster)."""
    if _here(worker):
        return worker.get("started") is not None and _started(int(worker["pid"])) == worker["started"]
    if isinstance(worker, dict) and worker.get("actor") and "ray" in sys.modules:
        from hps.search.ray import actor_alive

        return actor_alive(worker["actor"], worker.get("pid"))
    return False


def grace_seconds() -> int:
    """How long a trial's heartbeat may be late before its worker, unless seen alive, is judged
    lost: three intervals (two beats may be missed on a busy machine or a slow database), at
    least five seconds more than one."""
    beat = settings().heartbeat_seconds
    return max(3 * beat, beat + 5)


def same_process(worker: Any) -> bool:
    """The trial's worker is this very process."""
    me = identity()
    return isinstance(worker, dict) and all(worker.get(k) == me[k] for k in ("host", "boot", "pid", "started"))


def still_running(storage: BaseStorage, trial_id: int) -> bool:
    """The storage's filter on stale heartbeats: a trial whose worker is seen alive is not stale,
    however late its heartbeat (a busy machine, a slow database). Errors count as not seen."""
    try:
        return seen_alive(storage.get_trial_system_attrs(trial_id).get(WORKER))
    except Exception:
        return False


# --- why a trial ended ----------------------------------------------------------------------------

def interrupt_reason(stop: BaseException | str, when: str = "") -> tuple[str, str]:
    """``(cause, line)`` for a trial an interrupt stopped: ``terminated`` (SIGTERM) or
    ``interrupted`` (Ctrl-C / SIGINT); ``when`` says at which point (" with its run")."""
    terminated = stop == "terminated" if isinstance(stop, str) else isinstance(stop, Terminated) or TERMINATING.is_set()
    cause, signal_name = ("terminated", "SIGTERM") if terminated else ("interrupted", "Ctrl-C / SIGINT")
    return cause, f"{cause} ({signal_name}){when}; a rerun runs its params again"


def record_reason(storage: BaseStorage, trial_id: int, reason: str, cause: str = "lost_worker") -> None:
    """Write why a trial that already finished as FAIL failed (Optuna's own setters refuse
    finished trials): ``fail_reason`` (the cause) and ``hps:why`` (the line). Supported on RDB
    storages (the journal's workers are on one machine)."""
    try:
        rewrite_attrs(storage, trial_id, user={FAIL_REASON: cause}, system={WHY: reason})
    except Exception as e:  # the retry matters more than the note
        import warnings

        warnings.warn(f"could not store why trial {trial_id} failed: {e}", stacklevel=2)


def fail_running(storage: BaseStorage, trial_id: int, why: str, cause: str) -> bool:
    """Move a RUNNING trial to FAIL with ``cause`` and ``why`` stored on it; False when it is no
    longer RUNNING (it finished, or another run failed it first). On a database the move comes
    first (atomic: a worker only late to report may still finish the trial), then the reason; on a
    journal file (no such claim; callers hold its lock) the reason first, then the move."""
    from hps.search.optuna_compat import rdb_backend

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


# --- owing a trial again --------------------------------------------------------------------------

def owe(study: optuna.Study, trial: FrozenTrial, *, interrupted: bool = False) -> bool:
    """Queue ``trial``'s params again: a WAITING trial that resumes from its checkpoint, carrying
    the original's params and curve and a pointer to it (``failed_trial``, ``retry_history``),
    none of its reasons, worker or checkpoint. Not when it is itself a retry (a config that kills
    its worker twice is not tried a third time; an ``interrupted`` one is owed however often) or
    drew nothing (a retry would be a new draw)."""
    if not trial.params or (RETRY_OF in trial.system_attrs and not interrupted):
        return False
    history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={RETRY_OF: trial.number, RETRY_HISTORY: history,
                      **{k: v for k, v in trial.system_attrs.items() if k == RECHECK_OF}},  # a recheck's retry rechecks
        intermediate_values=trial.intermediate_values))
    return True


def fail_and_owe(study: optuna.Study, t: FrozenTrial, why: str, cause: str) -> bool:
    """Fail a RUNNING trial with its reason and owe its params once more (:func:`owe`); False
    (nothing owed) when it is no longer RUNNING (it finished, or another run settled it first)."""
    if not fail_running(storage_of(study), t._trial_id, why, cause):
        return False
    owe(study, t, interrupted=cause in INTERRUPT_CAUSES or cause == OWN_TRIAL_LOST)
    return True


class LostWorker:
    """Optuna's stale-trial callback (the trial is FAIL once its worker stops beating and is not
    seen alive): store why on the failed trial, then owe its params once."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = (f"no heartbeat from its worker for {grace_seconds()} s (killed, out of memory or "
                  f"lost); worker: {trial_info(trial, WORKER, 'unknown')}")
        record_reason(storage_of(study), trial._trial_id, reason)
        owe(study, trial)


def owe_interrupted(study: optuna.Study, run: str, cause: str = "interrupted") -> list[int]:
    """Queue again, once, the params of each trial this run's interrupt stopped (Ctrl-C, SIGTERM):
    the next run trains them, resuming from the stopped trial's checkpoint (as a killed worker's
    retry does). A trial of this run still RUNNING (a Ray worker, killed with the run) is failed
    first, with ``cause`` as its reason. Only this run's trials: runs sharing the study never owe
    one twice. Returns the numbers of the trials owed."""
    owed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if (trial_info(t, WORKER) or {}).get("run") != run or not t.params:
            continue
        if t.state == TrialState.RUNNING:
            if fail_and_owe(study, t, *reversed(interrupt_reason(cause, " with its run"))):
                owed.append(t.number)
        elif t.user_attrs.get(FAIL_REASON) in INTERRUPT_CAUSES and owe(study, t, interrupted=True):
            owed.append(t.number)
    return owed


class OutageLosses:
    """The trials a worker lost to its database going away mid-trial (a restart): each is failed
    with that reason once the database is back and owed again (its retry resumes from the
    checkpoint the objective kept), never left RUNNING nor counted as live work. Also Optuna's
    callback: a lost trial whose FAIL Optuna could tell (the database was back in time) is owed."""

    def __init__(self) -> None:
        self.lost: dict[int, str] = {}  # trial number -> why
        self.handled: set[int] = set()  # lost trials failed and owed (no failure of the config)

    def note(self, trial: optuna.Trial, e: BaseException) -> None:
        why = f"its worker lost the database mid-trial ({str(e).strip().splitlines()[0][:200]}); it is owed again"
        self.lost[trial.number] = why
        with contextlib.suppress(Exception):  # the database may be back already
            set_reason(trial, FAIL_REASON, OWN_TRIAL_LOST, why)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        why = self.lost.pop(trial.number, None)
        if why is None or trial.state != TrialState.FAIL:
            return
        if trial.user_attrs.get(FAIL_REASON) != OWN_TRIAL_LOST:
            record_reason(storage_of(study), trial._trial_id, why, OWN_TRIAL_LOST)
        owe(study, trial, interrupted=True)
        self.handled.add(trial.number)

    def recover(self, study: optuna.Study) -> list[int]:
        """Once the database is back: fail and owe this process's orphans (RUNNING, their end never
        written) and owe the lost trials Optuna did fail. Returns their numbers."""
        why = "its worker lost the database mid-trial (a restart?); it is owed again"
        done = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if same_process(trial_info(t, WORKER)) and fail_and_owe(study, t, self.lost.get(t.number, why),
                                                                        OWN_TRIAL_LOST)]
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in self.lost:
                self(study, t)
                done.append(t.number)
        self.handled.update(done)
        self.lost.clear()
        return sorted(done)


# --- settling what lost workers left --------------------------------------------------------------

def lost(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose worker is gone: its process ended on this machine
    (:func:`gone`), its heartbeat is stale and it is not seen alive (RDB storages), or it never
    recorded itself (a run stopped between Optuna creating the trial and running it)."""
    now = datetime.datetime.now()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ids = {t._trial_id for t in running
           if gone(trial_info(t, WORKER)) or (not trial_info(t, WORKER) and t.datetime_start is not None
                                               and (now - t.datetime_start).total_seconds() > NEVER_STARTED_AFTER)}
    alive = {t._trial_id for t in running if seen_alive(trial_info(t, WORKER))}
    return ids | (stale_trial_ids(study) - alive)


def settle(study: optuna.Study, run: str | None = None) -> list[int]:
    """Fail each trial left RUNNING by a worker that is gone (:func:`lost`), its reason stored, and
    queue its params once more (the retry resumes from its checkpoint); never leave it RUNNING.
    Safe with other runs settling the same study: only the one that moves a trial from RUNNING to
    FAIL queues its retry (a journal file is locked meanwhile). Returns the failed trials' numbers.

    The driver calls it before its workers start (what an earlier run left behind, on any storage:
    journal files have no heartbeats, the process check settles them) and, with its ``run`` id,
    after they return: it then waits, up to the heartbeat grace, for the trials its own workers
    left RUNNING (a Ray worker killed under it) to go stale."""
    failed = _settle_once(study)
    if run is None:
        return failed
    deadline = time.monotonic() + grace_seconds() + 5
    while time.monotonic() < deadline and any((trial_info(t, WORKER) or {}).get("run") == run for t in
                                              study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        time.sleep(1)
        failed += _settle_once(study)
    return failed


def settle_unstarted(study: optuna.Study) -> list[int]:
    """At the end of a run: a trial that a killed run created but never started (SIGKILL between
    Optuna's ask and hps's first write: no worker on it, no heartbeat) is judged lost only once it
    is older than a worker takes to record itself (``NEVER_STARTED_AFTER``). Wait for that, up to
    that long, and settle it, rather than leave it RUNNING when no run comes after this one."""
    from hps.search.storage import OUTAGES

    failed: list[int] = []
    deadline, said = time.monotonic() + NEVER_STARTED_AFTER + 5, False
    while time.monotonic() < deadline:
        try:
            unstarted = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if not trial_info(t, WORKER)]
            if not unstarted:
                break
            if not said:
                print(f"trial {', '.join(map(str, unstarted))}: created by a run that stopped before starting it; "
                      f"settled once it is {NEVER_STARTED_AFTER} s old (its params are not lost: it drew none)",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(1)
            failed += _settle_once(study)
        except OUTAGES:  # the database is away: the next run settles it
            break
    return failed


def _settle_once(study: optuna.Study) -> list[int]:
    failed = []
    with _locked(study):
        stale = lost(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in stale:
                continue
            worker = trial_info(t, WORKER) or {}
            why = (f"its worker's process is gone (pid {worker.get('pid')} on {worker.get('host')}: killed, out of memory "
                   f"or crashed)" if gone(worker) else
                   "it never started: its run stopped between creating it and running it" if not worker else
                   f"no heartbeat from its worker for {grace_seconds()} s (killed, out of memory or lost); worker: {worker}")
            if fail_and_owe(study, t, why, "lost_worker"):  # else another run settled it, or it finished
                failed.append(t.number)
    return failed


@contextlib.contextmanager
def _locked(study: optuna.Study) -> Iterator[None]:
    """Runs settling one journal file take turns (its writes cannot refuse a second FAIL the way
    a database row lock does). RDB storages need no lock: the move to FAIL is atomic there."""
    path = journal_path(storage_of(study))
    if path is None:
        yield
        return
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- a trial failed under its worker ---------------------------------------------------------------

class SettledElsewhere(optuna.TrialPruned):
    """Another run failed this worker's running trial (:func:`settled_elsewhere`). Raised as a
    prune so that Optuna logs one line for it, not the traceback of the write that found it."""


def settled_elsewhere(e: BaseException) -> bool:
    """Another run failed this worker's running trial, so Optuna cannot tell it: not this worker's
    end. Optuna 5.0 raises "Cannot tell a FAIL trial", or, when the objective had returned, masks
    that with an ``AssertionError`` ("Should not reach", its ``finally``): the error is then the context."""
    for err in (e, e.__context__):
        if isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or (
                isinstance(err, ValueError) and str(err).startswith("Cannot tell a ")):
            return True
    return False
