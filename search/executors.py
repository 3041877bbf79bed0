"""Executors run trials of a study until it holds the requested number of finished trials.

The interface the in-process and Ray executors share: ``executor.run(space, url, target)``,
returning when the study has ``target`` finished (COMPLETE + PRUNED) trials, its timeout or
compute budget is spent, or trials keep failing. Each worker calls ``study.optimize`` against the
shared storage, so Optuna's heartbeats run and its pruner decides.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # no public name in Optuna 5.0
from optuna.trial import FrozenTrial, TrialState

from search.objective import Objective
from search.space import Space
from search.storage import HEARTBEAT_SECONDS, OUTAGES, dispose, get_storage
from search.study import FAILED_ATTR, FINISHED, STOPPED_ATTR, load_study, open_study

MAX_FAILS_IN_A_ROW = 3
MAX_STORAGE_OUTAGES = 5  # per worker; 5 s apart


class Executor(Protocol):
    def run(self, space: Space, url: str, target: int) -> None: ...


def device_seconds(study: optuna.Study) -> float:
    return sum(float(t.user_attrs.get("device_seconds", 0.0)) for t in study.get_trials(deepcopy=False))


class StudyBudget:
    """Stops the study once its trials' device-seconds reach ``budget.max_device_hours``."""

    def __init__(self, max_device_hours: float | None) -> None:
        self.limit = None if max_device_hours is None else max_device_hours * 3600

    def spent(self, study: optuna.Study) -> bool:
        return self.limit is not None and device_seconds(study) >= self.limit

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.spent(study):
            study.set_user_attr(STOPPED_ATTR, f"compute budget spent: {device_seconds(study):.0f} device-seconds")
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
    why on the study, with the first failure's reason: ``hps run`` exits non-zero with it."""

    def __init__(self) -> None:
        self.streak: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = [*self.streak, trial] if trial.state == TrialState.FAIL else []
        if len(self.streak) >= MAX_FAILS_IN_A_ROW:
            first = self.streak[0]
            why = first.user_attrs.get("fail_reason", "no reason stored")
            study.set_user_attr(FAILED_ATTR, f"stopped after {len(self.streak)} failed trials in a row; "
                                             f"first: trial {first.number}: {why}")
            study.stop()


ObjectiveFn = Callable[[optuna.Trial], Any]


def optimize(space: Space, url: str, target: int, *, pool_size: int = 2, worker: dict[str, Any] | None = None,
             index: int = 0, objective: ObjectiveFn | None = None) -> None:
    """One worker's loop (in this process): shared by the in-process executor and Ray actors.
    ``worker`` (host, pid, GPUs) is stored on each trial it runs; ``index`` tells workers apart.
    ``objective`` replaces the trainer (benchmarks of the orchestration alone). A database that goes
    away (a restart) is waited for, up to ``MAX_STORAGE_OUTAGES`` times 5 s, wherever it happens:
    opening the study or running it; the trial in flight then fails through heartbeats."""
    for outage in range(MAX_STORAGE_OUTAGES + 1):
        storage = None
        try:
            storage = get_storage(url, pool_size=pool_size)
            study = load_study(space.name, storage)
            offset = len(study.get_trials(deepcopy=False)) + 7919 * index
            study.sampler, study.pruner = space.make_sampler(offset), space.make_pruner()
            budget = StudyBudget(space.budget.max_device_hours)
            if budget.spent(study) or Target(target).reached(study):
                return
            study.optimize(objective or Objective(space, worker), timeout=space.spec.study.timeout, catch=(Exception,),
                           callbacks=[Target(target), budget, FailureGuard()])
            return
        except OUTAGES:
            if outage == MAX_STORAGE_OUTAGES:
                raise
            time.sleep(5)
        finally:
            if storage is not None:
                dispose(storage)


def settle(space: Space, url: str) -> list[int]:
    """Driver side, after the workers returned: a trial still RUNNING whose worker died after the
    last ``ask`` is failed here once its heartbeat is stale (its reason stored, its params queued
    for a retry that the next run takes first), never left RUNNING. Returns the failed numbers."""
    storage = get_storage(url)
    failed: list[int] = []
    try:
        if not is_heartbeat_enabled(storage):
            return failed
        study = load_study(space.name, storage)
        deadline = time.monotonic() + 2 * HEARTBEAT_SECONDS + 5
        while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            failed += sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
            time.sleep(1)
        return failed
    finally:
        dispose(storage)


def prepare(space: Space, url: str) -> None:
    """Driver side, once before any worker starts: create the study and enqueue its warm starts."""
    storage = get_storage(url, heartbeat=False)
    try:
        study = open_study(space, storage)
        if study.user_attrs.get(FAILED_ATTR):
            study.set_user_attr(FAILED_ATTR, None)  # a new run: the last one's stop is history
    finally:
        dispose(storage)


class InProcessExecutor:
    """Trials one after another in this process (the embedded default)."""

    def run(self, space: Space, url: str, target: int) -> None:
        prepare(space, url)
        optimize(space, url, target)
