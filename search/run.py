"""The one driver: a space -> a study run to its target -> a :class:`RunResult`.

``hps run``, :func:`hps.run`, the benchmarks and the tests all go through :func:`run`. It checks
the settings and the data before anything trains, opens the storage and the study once (the
sampler and pruner built once), runs the executor (this process, or Ray workers), settles what
it can and summarises. A run that stopped on failures raises :class:`RunFailed` with the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hps.search.budget import BUDGET_SPENT, StudyBudget
from hps.search.errors import INTERRUPTED, TERMINATING, RunFailed, StudyError, Terminated, on_sigint, on_sigterm
from hps.search.loggers import Callbacks, from_spec
from hps.search.quiet import quiet_optuna
from hps.search.record import (
    FAILED,
    RECHECK_OF,
    best_feasible,
    best_note,
    counts,
    finished_by_definition,
    reason,
    recheck_count,
    rechecks_due,
    stop_reasons,
    study_attrs,
)
from hps.search.settings import settings
from hps.search.space import Space, load_space
from hps.search.storage import artifact_store, dispose, get_storage, redact, storage_url
from hps.search.study import begin_run, open_study, queue_trial

Progress = str  # "auto", "live" (a terminal panel), "lines" (a line per finished trial: notebooks, logs), "none"


@dataclasses.dataclass
class RunResult:
    """What a run left in its study. ``study`` stays usable (its storage is open until the
    process ends); ``best_trial`` is the best COMPLETE trial that meets the budget, or None."""

    study: optuna.Study
    storage: str  # the storage URL, password redacted
    target: int
    counts: dict[str, int]  # trials by state: complete, pruned, fail, running, waiting
    failures: list[str]  # "trial N: reason" of every FAIL trial
    stopped: list[str]  # why the run stopped early (trials kept failing, compute budget spent)
    best_trial: FrozenTrial | None
    earlier: int = 0  # finished trials of earlier definitions (--allow-change): they count for no target
    rechecks: int = 0  # finished rechecks (``study.recheck``): they count for no target either

    @property
    def finished(self) -> int:
        """Finished (COMPLETE or PRUNED) search trials of the study's current definition: what ``target`` counts."""
        return self.counts.get("complete", 0) + self.counts.get("pruned", 0) - self.earlier - self.rechecks

    def dataframe(self) -> Any:
        """One row per trial (a ``pandas.DataFrame``): state, value, params, the fitted width, budget
        figures, seconds and reasons (:func:`hps.search.frame.trials_frame`)."""
        from hps.search.frame import trials_frame

        return trials_frame(self.study)

    def __str__(self) -> str:
        states = ", ".join(f"{v} {k}" for k, v in self.counts.items()) or "no trials"
        best = (f"; best: trial {self.best_trial.number} {best_note(self.study, self.best_trial)}" if self.best_trial
                else "; no complete trial meets the budget yet")
        rechecks = f" + {self.rechecks} rechecks" if self.rechecks else ""
        return (f"study {self.study.study_name}: {self.finished}/{self.target} finished{rechecks}{_under(self.earlier)} "
                f"({states}){best}")

    def __repr__(self) -> str:  # one line in a notebook or a REPL (the dataclass's would print every trial)
        return f"<RunResult {self}>"


def _under(earlier: int) -> str:
    return f" under this definition ({earlier} under earlier ones)" if earlier else ""


def summarise(study: optuna.Study, url: str, target: int) -> RunResult:
    trials = study.get_trials(deepcopy=False)
    failures = [f"trial {t.number}: {reason(t) or 'no reason stored'}" for t in trials
                if t.state == TrialState.FAIL]
    return RunResult(study, redact(url), target, counts(trials), failures, stop_reasons(study_attrs(study)),
                     best_feasible(study), finished_by_definition(study, trials)[1], recheck_count(study, trials))


def run(space: Space | str | Path | Mapping[str, Any], storage: str | None = None, *, trials: int | None = None,
        ray: str | None = None, workers: int = 2, gpus_per_trial: float = 0.0, cpus_per_trial: float = 1.0,
        overrides: Mapping[str, Any] | None = None, progress: Progress = "auto", echo: Any = None,
        allow_change: bool = False, objective: Any = None, callbacks: Sequence[Any] = (),
        log: Sequence[str] = (), train: Any = None) -> RunResult:
    """Run (or resume) a study until it holds ``trials`` (default ``study.trials``) finished trials.

    ``space``: a :class:`Space`, a space file or a plain dict (``overrides`` then applies dotted
    keys, as ``--set``). ``storage``: a URL (default ``$HPS_STORAGE``, else ``sqlite:///hps.db``).
    ``ray``: None runs trials in this process; ``"local"``, ``"auto"`` or an address runs
    ``workers`` Ray workers with ``gpus_per_trial`` / ``cpus_per_trial`` each. ``progress``:
    ``"auto"`` (a live panel in a terminal, a line per finished trial elsewhere), ``"live"``,
    ``"lines"`` or ``"none"``. ``echo``: where progress lines go (default: standard output).
    ``allow_change`` continues a study whose definition (space, budget, objectives, data) differs
    from the space's, and records the change; without it such a rerun raises
    :class:`DefinitionChanged` listing what changed. ``objective`` replaces the trainer (a
    picklable ``f(trial)``: benchmarks of the orchestration). ``callbacks``: objects with
    ``on_epoch(trial, epoch, metrics)`` and/or ``on_trial_end(trial, state, value)``
    (:mod:`hps.search.loggers`); ``log``: ``"tensorboard:DIR"`` / ``"mlflow:URI"`` (``--log``).
    ``train``: your own training function (defined at the top level of a .py file, or
    ``"path/file.py:fn"``), run instead of hps's loop as ``train.fn`` (:mod:`hps.trainers.custom`).

    Raises :class:`RunFailed` (its ``result`` attached) when trials kept failing, and the user
    errors (:class:`SpaceError`, :class:`SettingsError`, :class:`StudyError`, :class:`DataError`)
    before anything trains. A ``KeyboardInterrupt`` stops the run; finished trials are kept and a
    rerun resumes."""
    from hps.search.progress import view
    from hps.search.trials import new_run, owe_interrupted, settle_unstarted
    from hps.trainers import load_data
    from hps.trainers.device import resolve_device

    quiet_optuna()
    settings()  # every HPS_* setting checked before anything runs
    space = _load(space, overrides, train)
    space.callbacks = Callbacks([*callbacks, *(from_spec(spec) for spec in log)]).callbacks  # checked here, once
    if trials is not None and trials < 1:
        raise StudyError(f"trials: {trials} is not allowed; expected >= 1")
    target = trials or space.spec.study.trials
    url = storage_url(storage)
    executor = _executor(ray, url, workers, gpus_per_trial, cpus_per_trial)
    # data problems surface before any trial; an in-process run's trials reuse this load (same device)
    load_data(space.base.data, "cpu" if ray is not None else resolve_device(space.base.train.device))
    artifact_store()  # the artifact store is reachable before anything trains
    store = get_storage(url)
    study = None
    run_id = new_run()
    try:
        study = open_study(space, store, driver=True, allow_change=allow_change)
        begin_run(study)
        out = echo or sys.stdout
        _settle_and_say(study, url, target, out)
        if (connect := getattr(executor, "connect", None)) is not None:
            connect()  # Ray, before our SIGTERM handler: ray.init installs its own
        with view(progress, study, target, out), _signals_as_interrupt():
            executor.run(space, study, url, target, objective, run_id)
            if objective is None and _queue_rechecks(space, study, target, out):
                executor.run(space, study, url, 0, objective, run_id)  # only what is queued: the rechecks
            settle_unstarted(study)  # no trial left RUNNING by a run killed before it started one
        result = summarise(study, url, target)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated) or TERMINATING.is_set()  # Ray's wait turns ours into a KeyboardInterrupt
        if study is not None:
            owe_interrupted(study, run_id, "terminated" if terminated else "interrupted")
        dispose(store)
        if terminated and not isinstance(e, Terminated):
            raise Terminated() from None
        raise
    except BaseException:
        dispose(store)
        raise
    failed = study_attrs(study).get(FAILED)
    if failed:
        raise RunFailed(f"study {space.name}: {failed}", result)
    return result


def _executor(ray: str | None, url: str, workers: int, gpus_per_trial: float, cpus_per_trial: float) -> Any:
    """Trials in this process, or on Ray workers (the cluster checked against the storage first)."""
    if ray is None:
        from hps.search.executors import InProcessExecutor

        return InProcessExecutor()
    from hps.search.ray import RayExecutor

    executor = RayExecutor(ray, workers=workers, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial)
    executor.check(url)
    return executor


def _settle_and_say(study: optuna.Study, url: str, target: int, out: Any) -> None:
    """Settle what an earlier run left RUNNING (failed with its reason, its params owed) and say
    where the study stands."""
    from hps.search.trials import settle

    settled = settle(study)
    before, earlier = finished_by_definition(study)
    print(f"study {study.study_name} on {redact(url)}: {before} finished{_under(earlier)}, {max(target - before, 0)} owed"
          + (f"; trials {', '.join(map(str, settled))} were left running by a run that is gone: retried" if settled else ""),
          file=out, flush=True)


def _queue_rechecks(space: Space, study: optuna.Study, target: int, out: Any) -> int:
    """``study.recheck: K``: once the search holds its target or has spent its share of the
    compute budget (:class:`StudyBudget` keeps K + 1 trainings' worth back), queue each of its best K
    trials again with another seed (:func:`rechecks_due`); export then takes the best mean over
    the runs (:func:`best_feasible`). Not after a search stopped short otherwise (a timeout,
    failures). Returns how many were queued."""
    k, attrs = space.spec.study.recheck, study_attrs(study)
    budget_spent = any(r.startswith(BUDGET_SPENT) for r in stop_reasons(attrs))
    if not k or attrs.get(FAILED) or (finished_by_definition(study)[0] < target and not budget_spent):
        return 0
    n = StudyBudget(space.budget.max_device_hours).affordable(study, k)
    if n < k:  # the search's last trial ran past what was kept back
        print(f"the compute budget left pays for {n} of {k} rechecks", file=out, flush=True)
    due = rechecks_due(study, n)
    for t in due:
        queue_trial(study, t.params, RECHECK_OF, t.number)
    if due:
        print(f"rechecking trials {', '.join(str(t.number) for t in due)} with another seed (study.recheck: {k})",
              file=out, flush=True)
    return len(due)


def _load(space: Space | str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None, train: Any) -> Space:
    """The space to run: loaded with ``overrides`` and ``train`` (as ``fixed.train.fn``) unless it is loaded already."""
    if isinstance(space, Space):
        if overrides or train is not None:
            raise StudyError("overrides and train= apply to a space file or dict; this space is already loaded "
                             "(use hps.load_space(path, overrides=...))")
        return space
    if train is not None:
        from hps.search.space import parse_overrides
        from hps.trainers.custom import reference_of

        overrides = {**parse_overrides(overrides or {}), "fixed.train.fn": reference_of(train)}
    return load_space(space, overrides=overrides)


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, a scheduler) stops the run as Ctrl-C does (:class:`Terminated`),
    and both signals are also remembered (:func:`check_stop`): one that lands in a garbage-collector
    callback has its exception swallowed. A SIGINT the process ignores (started in the background)
    stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    INTERRUPTED.clear()  # a notebook's earlier stop is history
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


