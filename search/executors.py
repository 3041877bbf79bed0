"""Executors run trials of a study until it holds the requested number of finished trials.

The interface the in-process and Ray executors share: ``executor.run(space, study, url, target)``,
returning when the study has ``target`` finished (COMPLETE + PRUNED) trials, its timeout or
compute budget is spent, or trials keep failing. Every worker runs :func:`work`: Optuna's
``study.optimize`` against the shared storage, so Optuna's heartbeats run and its pruner decides.
The driver (:func:`hps.search.run.run`) opens the storage and the study; the in-process executor
works on that study, each Ray worker opens its own (:mod:`hps.search.ray`).
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
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # no public name in Optuna 5.0
from optuna.trial import FrozenTrial, TrialState

from hps.search.budget import StudyBudget
from hps.search.errors import Terminated, check_stop
from hps.search.record import (
    FAIL_REASON,
    FAILED,
    FINISHED,
    WORKER,
    reason,
    set_reason,
    set_study_attr,
    set_trial_info,
    trial_info,
)
from hps.search.settings import settings
from hps.search.space import Space
from hps.search.storage import OUTAGES, LostWorker, fail_running

MAX_FAILS_IN_A_ROW = 3
MAX_STORAGE_OUTAGES = 5  # per worker; 5 s apart
ObjectiveFn = Callable[[optuna.Trial], Any]


class SettledElsewhere(optuna.TrialPruned):
    """Another run failed this worker's running trial (:func:`settled_elsewhere`). Raised as a
    prune so that Optuna logs one line for it, not the traceback of the write that found it."""


class Executor(Protocol):
    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None,
            run: str = "") -> None: ...


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


def gone(worker: Any) -> bool:
    """The process that ran a trial has ended: it ran on this machine (same host name and boot) and
    its pid runs no more, or runs another process. A worker on another machine is never judged here."""
    if not isinstance(worker, dict) or worker.get("boot") is None or "pid" not in worker:
        return False
    if worker.get("host") != socket.gethostname() or worker["boot"] != _boot_id():
        return False
    started = _started(int(worker["pid"]))
    return started is None or (worker.get("started") is not None and started != worker["started"])


class Target:
    """Stops a worker once the study's finished (COMPLETE or PRUNED) trials and the trials other
    workers are running reach ``target``, and no trial is WAITING (a queued trial, a warm start or
    the retry of a trial whose worker died, is owed work). Workers and processes sharing a study
    stop together at the target instead of each finishing one more: a running trial counts unless
    its worker is gone (:func:`lost`)."""

    def __init__(self, target: int) -> None:
        self.target = target

    def reached(self, study: optuna.Study) -> bool:
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING, TrialState.RUNNING))
        if any(t.state == TrialState.WAITING for t in trials):
            return False
        finished = sum(t.state in FINISHED for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and trial_info(t, WORKER)]  # (a worker records
        if running and finished < self.target:                                                  # itself at once)
            stale = lost(study)
            running = [t for t in running if t._trial_id not in stale]
        return finished + len(running) >= self.target

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.reached(study):
            study.stop()


class FailureGuard:
    """Stops a worker after ``MAX_FAILS_IN_A_ROW`` failed trials (a bug, not bad luck) and stores
    why on the study, with the first failure's reason: the run then fails with it."""

    def __init__(self) -> None:
        self.streak: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = [*self.streak, trial] if trial.state == TrialState.FAIL else []
        if len(self.streak) >= MAX_FAILS_IN_A_ROW:
            first = self.streak[0]
            why = reason(first) or "no reason stored"
            set_study_attr(study, FAILED, f"stopped after {len(self.streak)} failed trials in a row; "
                                          f"first: trial {first.number}: {why}")
            study.stop()



def work(space: Space, study: optuna.Study, target: int, *, worker: dict[str, Any] | None = None,
         objective: ObjectiveFn | None = None) -> None:
    """One worker's loop on an opened study: shared by the in-process executor and Ray actors.
    ``worker`` (:func:`identity`, plus GPUs on Ray) is stored on each trial it runs; ``objective`` replaces the trainer
    (benchmarks of the orchestration alone). A database that goes away (a restart) is waited for,
    up to ``MAX_STORAGE_OUTAGES`` times 5 s; the trial in flight then fails through heartbeats."""
    from hps.search.objective import Objective

    budget = StudyBudget(space.budget.max_device_hours)
    worker = worker or identity()
    train = objective or Objective(space, worker)

    def run_trial(trial: optuna.Trial) -> Any:
        try:
            check_stop()  # a signal whose exception a gc callback swallowed
            set_trial_info(trial, WORKER, worker)  # first: a later run can tell this process is gone
            return train(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # a report, attr or note on a trial failed under it
            raise SettledElsewhere(f"trial {trial.number} was failed by another run while this worker ran it") from None
        except KeyboardInterrupt as e:  # also before the trainer's objective got to say why
            with contextlib.suppress(Exception):  # (another run may have settled the trial meanwhile)
                if FAIL_REASON not in trial.user_attrs:
                    cause = "terminated" if isinstance(e, Terminated) else "interrupted"
                    set_reason(trial, FAIL_REASON, cause, f"{cause} before it sampled its params")
            raise

    outages = 0
    while True:
        try:
            if budget.spent(study) or Target(target).reached(study):
                return
            study.optimize(run_trial, timeout=space.spec.study.timeout, catch=(Exception,),
                           callbacks=[Target(target), budget, FailureGuard()])
            return
        except Exception as e:
            if settled_elsewhere(e):  # the trial was failed under this worker, its retry queued: carry on
                print("a trial of this worker was failed by another run (its heartbeat came late: is the machine "
                      "overloaded?); its params are queued again", file=sys.stderr, flush=True)
                continue
            if not is_outage(e) or outages == MAX_STORAGE_OUTAGES:
                raise
            outages += 1
            time.sleep(5)


def settled_elsewhere(e: BaseException) -> bool:
    """Another run failed this worker's running trial (its heartbeat was stale to them: a starved
    heartbeat thread on an overloaded machine), so Optuna cannot tell it: not this worker's end.
    Optuna 5.0 raises "Cannot tell a FAIL trial", or, when the objective had returned, masks that
    with an ``AssertionError`` ("Should not reach", its ``finally``): the error is then the context."""
    for err in (e, e.__context__):
        if isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or (
                isinstance(err, ValueError) and str(err).startswith("Cannot tell a ")):
            return True
    return False


def is_outage(e: BaseException) -> bool:
    """The database went away. Optuna 5.0's ``_run_trial`` masks an outage during its tell with an
    ``UnboundLocalError`` (its ``finally`` reads a variable the failed re-read never set): the
    outage is that error's context."""
    if isinstance(e, OUTAGES):
        return True
    return isinstance(e, UnboundLocalError) and isinstance(e.__context__, OUTAGES)


NEVER_STARTED_AFTER = 60  # seconds: a worker records itself on its trial within milliseconds of asking for it


def lost(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose worker is gone: its process ended on this machine
    (:func:`gone`), its heartbeat is stale (RDB storages), or it never recorded itself (a run
    stopped between Optuna creating the trial and running it)."""
    now = datetime.datetime.now()
    ids = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if gone(trial_info(t, WORKER)) or (not trial_info(t, WORKER) and t.datetime_start is not None
                                               and (now - t.datetime_start).total_seconds() > NEVER_STARTED_AFTER)}
    storage = study._storage
    if is_heartbeat_enabled(storage):
        ids |= set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]
    return ids


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
    deadline = time.monotonic() + 2 * settings().heartbeat_seconds + 5
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
    beat = settings().heartbeat_seconds
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
                   f"no heartbeat from its worker for {2 * beat} s (killed, out of memory or lost); worker: {worker}")
            if not fail_running(study._storage, t._trial_id, why, "lost_worker"):  # another run settled it, or it finished
                continue
            LostWorker.retry_once(study, t)
            failed.append(t.number)
    return failed


@contextlib.contextmanager
def _locked(study: optuna.Study) -> Iterator[None]:
    """Runs settling one journal file take turns (its writes cannot refuse a second FAIL the way
    a database row lock does). RDB storages need no lock: the move to FAIL is atomic there."""
    path = getattr(getattr(study._storage, "_backend", None), "_file_path", None)  # JournalFileBackend's file
    if path is None:
        yield
        return
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class InProcessExecutor:
    """Trials one after another in this process (the embedded default), on the driver's study."""

    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None,
            run: str = "") -> None:
        work(space, study, target, worker=identity(run), objective=objective)
