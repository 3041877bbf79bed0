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
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hps.search.budget import StudyBudget
from hps.search.errors import check_stop
from hps.search.heartbeat import beating
from hps.search.optuna_compat import storage_of
from hps.search.record import (
    DEFINITION,
    FAIL_REASON,
    FAILED,
    FINISHED,
    RECHECK_OF,
    WORKER,
    current,
    reason,
    set_reason,
    set_study_attr,
    set_trial_info,
    trial_info,
)
from hps.search.space import Space
from hps.search.storage import OUTAGES, StorageUnavailable
from hps.search.trials import OutageLosses, SettledElsewhere, identity, interrupt_reason, lost, same_process, settled_elsewhere

MAX_FAILS_IN_A_ROW = 3
MAX_STORAGE_OUTAGES = 5  # per worker; 5 s apart
ObjectiveFn = Callable[[optuna.Trial], Any]


class Executor(Protocol):
    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None,
            run: str = "") -> None: ...




class Target:
    """Stops a worker once the study's finished (COMPLETE or PRUNED) trials of its current
    definition (``--allow-change`` gives a new one ``target`` trials of its own; rechecks do not
    count) and the trials
    other workers are running reach ``target``, and no trial is WAITING (a queued trial, a warm
    start or the retry of a trial whose worker died, is owed work). Workers and processes sharing a
    study stop together at the target instead of each finishing one more: a running trial counts
    unless its worker is gone (:func:`lost`) or is this process (it runs none when it asks: such a
    trial is an orphan, its end lost with the database)."""

    def __init__(self, target: int) -> None:
        self.target = target

    def reached(self, study: optuna.Study) -> bool:
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING, TrialState.RUNNING))
        if any(t.state == TrialState.WAITING for t in trials):
            return False
        same = current(study)
        trials = [t for t in trials if RECHECK_OF not in t.system_attrs]  # the target counts search trials
        finished = sum(t.state in FINISHED and same(t) for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and trial_info(t, WORKER)  # (a worker records
                   and not same_process(trial_info(t, WORKER))                                  # itself at once)
                   and (DEFINITION not in t.system_attrs or same(t))]
        if running and finished < self.target:
            stale = lost(study)
            running = [t for t in running if t._trial_id not in stale]
        return finished + len(running) >= self.target

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.reached(study):
            study.stop()


class FailureGuard:
    """Stops a worker after ``MAX_FAILS_IN_A_ROW`` failed trials (a bug, not bad luck) and stores
    why on the study, with the first failure's reason: the run then fails with it. Trials in
    ``ignored`` (lost to a database outage, owed again) say nothing of the config and are skipped."""

    def __init__(self, ignored: set[int] | None = None) -> None:
        self.streak: list[FrozenTrial] = []
        self.ignored = ignored if ignored is not None else set()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.number in self.ignored:
            return
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
    up to ``MAX_STORAGE_OUTAGES`` times 5 s (:func:`_wait_out`); the trial in flight is then
    failed with that reason and owed again (:class:`OutageLosses`)."""
    from hps.search.objective import Objective

    budget = StudyBudget(space.budget.max_device_hours, space.spec.study.recheck if objective is None else 0)
    worker = worker or identity()
    train = objective or Objective(space, worker)
    losses = OutageLosses()

    def run_trial(trial: optuna.Trial) -> Any:
        try:
            check_stop()  # a signal whose exception a gc callback swallowed
            set_trial_info(trial, WORKER, worker)  # first: a later run can tell this process is gone
            if space.definition_hash:  # the study's definition this trial runs under (the target counts those)
                set_trial_info(trial, DEFINITION, space.definition_hash)
            return train(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # a report, attr or note on a trial failed under it
            raise SettledElsewhere(f"trial {trial.number} was failed by another run while this worker ran it") from None
        except OUTAGES as e:
            losses.note(trial, e)
            raise
        except KeyboardInterrupt as e:  # also before the trainer's objective got to say why
            with contextlib.suppress(Exception):  # (another run may have settled the trial meanwhile)
                if FAIL_REASON not in trial.user_attrs:
                    set_reason(trial, FAIL_REASON, *interrupt_reason(e, " before it sampled its params"))
            raise

    with beating(storage_of(study), worker):
        _loop(space, study, target, run_trial, budget, losses)


def _loop(space: Space, study: optuna.Study, target: int, run_trial: ObjectiveFn, budget: StudyBudget,
          losses: OutageLosses) -> None:
    outages = 0
    while True:
        try:
            if budget.spent(study) or Target(target).reached(study):
                return
            study.optimize(run_trial, timeout=space.spec.study.timeout, catch=(Exception,),
                           callbacks=[losses, Target(target), budget, FailureGuard(losses.handled)])
            return
        except Exception as e:
            if settled_elsewhere(e):  # the trial was failed under this worker, its retry queued: carry on
                print("a trial of this worker was failed by another run (its heartbeat came late: is the machine "
                      "overloaded?); its params are queued again", file=sys.stderr, flush=True)
                continue
            if not is_outage(e):
                raise
            outages += 1
            if _wait_out(study, e, outages, losses):
                outages = 0  # back: the bound is per outage


def _wait_out(study: optuna.Study, e: BaseException, outages: int, losses: OutageLosses) -> bool:
    """The database went away: give up after ``MAX_STORAGE_OUTAGES`` waits (one line; the next run
    settles what this worker left RUNNING, its checkpoints kept), else wait 5 s and, if it is back,
    fail and owe the trials this worker lost to it. True when it is back."""
    first = str(e if isinstance(e, OUTAGES) else e.__context__).strip().splitlines()[0][:200]
    if outages > MAX_STORAGE_OUTAGES:
        raise StorageUnavailable(f"lost the database for over {5 * MAX_STORAGE_OUTAGES} s ({first}); the trials this "
                                 "worker was running stay RUNNING until a rerun settles and retries them") from None
    print(f"the database went away ({first}); waiting for it ({outages}/{MAX_STORAGE_OUTAGES}, 5 s each)",
          file=sys.stderr, flush=True)
    time.sleep(5)
    try:
        owed = losses.recover(study)
    except OUTAGES:  # not back yet: the loop meets it again
        return False
    if owed:
        print(f"trial {', '.join(map(str, owed))}: lost to a database outage mid-trial; failed and owed again "
              "(the retry resumes from its checkpoint)", file=sys.stderr, flush=True)
    return True


def is_outage(e: BaseException) -> bool:
    """The database went away. Optuna 5.0's ``_run_trial`` masks an outage during its tell with an
    ``UnboundLocalError`` (its ``finally`` reads a variable the failed re-read never set) or an
    ``AssertionError`` ("Should not reach."): the outage is that error's context."""
    if isinstance(e, OUTAGES):
        return True
    return isinstance(e, (UnboundLocalError, AssertionError)) and isinstance(e.__context__, OUTAGES)


class InProcessExecutor:
    """Trials one after another in this process (the embedded default), on the driver's study."""

    def run(self, space: Space, study: optuna.Study, url: str, target: int, objective: ObjectiveFn | None = None,
            run: str = "") -> None:
        work(space, study, target, worker=identity(run), objective=objective)
