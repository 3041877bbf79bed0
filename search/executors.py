"""Executors run trials of a study until it holds the requested number of finished trials.

The interface the in-process and Ray executors share: ``executor.run(space, study, url, target)``,
returning when the study has ``target`` finished (COMPLETE + PRUNED) trials, its timeout or
compute budget is spent, or trials keep failing. Every worker runs :func:`work`: Optuna's
``study.optimize`` against the shared storage, so Optuna's heartbeats run and its pruner decides.
The driver (:func:`hps.search.run.run`) opens the storage and the study; the in-process executor
works on that study, each Ray worker opens its own (:mod:`hps.search.ray`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # no public name in Optuna 5.0
from optuna.trial import FrozenTrial, TrialState

from hps.search.record import DEVICE_SECONDS, FAILED, FINISHED, STOPPED, reason, set_study_attr
from hps.search.settings import settings
from hps.search.space import Space
from hps.search.storage import OUTAGES

MAX_FAILS_IN_A_ROW = 3
MAX_STORAGE_OUTAGES = 5  # per worker; 5 s apart
ObjectiveFn = Callable[[optuna.Trial], Any]


class Executor(Protocol):
    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None) -> None: ...


def device_seconds(study: optuna.Study) -> float:
    return sum(float(t.user_attrs.get(DEVICE_SECONDS, 0.0)) for t in study.get_trials(deepcopy=False))


class StudyBudget:
    """Stops the study once its trials' device-seconds reach ``budget.max_device_hours``."""

    def __init__(self, max_device_hours: float | None) -> None:
        self.limit = None if max_device_hours is None else max_device_hours * 3600

    def spent(self, study: optuna.Study) -> bool:
        return self.limit is not None and device_seconds(study) >= self.limit

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.spent(study):
            set_study_attr(study, STOPPED, f"compute budget spent: {device_seconds(study):.0f} device-seconds")
            study.stop()


class Target:
    """Stops the study at ``target`` finished (COMPLETE or PRUNED) trials once no trial is WAITING:
    a queued trial (a warm start, or the retry of a trial whose worker died) is owed work."""

    def __init__(self, target: int) -> None:
        self.target = target

    def reached(self, study: optuna.Study) -> bool:
        states = [t.state for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING))]
        return TrialState.WAITING not in states and len(states) >= self.target

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
    ``worker`` (host, pid, GPUs) is stored on each trial it runs; ``objective`` replaces the trainer
    (benchmarks of the orchestration alone). A database that goes away (a restart) is waited for,
    up to ``MAX_STORAGE_OUTAGES`` times 5 s; the trial in flight then fails through heartbeats."""
    from hps.search.objective import Objective

    budget = StudyBudget(space.budget.max_device_hours)
    for outage in range(MAX_STORAGE_OUTAGES + 1):
        try:
            if budget.spent(study) or Target(target).reached(study):
                return
            study.optimize(objective or Objective(space, worker), timeout=space.spec.study.timeout, catch=(Exception,),
                           callbacks=[Target(target), budget, FailureGuard()])
            return
        except Exception as e:
            if not is_outage(e) or outage == MAX_STORAGE_OUTAGES:
                raise
            time.sleep(5)


def is_outage(e: BaseException) -> bool:
    """The database went away. Optuna 5.0's ``_run_trial`` masks an outage during its tell with an
    ``UnboundLocalError`` (its ``finally`` reads a variable the failed re-read never set): the
    outage is that error's context."""
    if isinstance(e, OUTAGES):
        return True
    return isinstance(e, UnboundLocalError) and isinstance(e.__context__, OUTAGES)


def settle(study: optuna.Study) -> list[int]:
    """Driver side, after the workers returned: a trial still RUNNING whose worker died after the
    last ``ask`` is failed here once its heartbeat is stale (its reason stored, its params queued
    for a retry that the next round takes first), never left RUNNING. Returns the failed numbers."""
    failed: list[int] = []
    if not is_heartbeat_enabled(study._storage):
        return failed
    deadline = time.monotonic() + 2 * settings().heartbeat_seconds + 5
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed += sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
        time.sleep(1)
    return failed


class InProcessExecutor:
    """Trials one after another in this process (the embedded default), on the driver's study."""

    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None) -> None:
        work(space, study, target, objective=objective)
