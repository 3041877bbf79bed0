"""What hps stores on a trial and a study, in one place. Imports neither torch nor the trainer.

Two kinds of attribute, chosen for what the stock optuna-dashboard and ``optuna`` CLI show:

- **user attrs** are the dashboard's trial-table columns (sortable, filterable) and ``optuna
  studies``' ``user_attrs`` cell: only short scalars go there (budget figures, seconds, best value
  and epoch, the live epoch figures, the reasons);
- **system attrs** hold what a table cannot show well (the full trainer config, the data's identity,
  the worker, checkpoints, the space): prefixed ``hps:``, read back by ``hps export`` and ``hps
  status``. Optuna's own system attrs (``constraints:<key>``, ``failed_trial``, ...) sit beside them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hps.search.optuna_compat import set_study_system_attr, study_system_attrs

# trial user attrs: short scalars, one dashboard column each (the table fits a screen)
PRUNE_REASON, FAIL_REASON = "prune_reason", "fail_reason"  # the cause as one token: over:max_params, pruner:asha, ...
DEVICE_SECONDS, BEST_VALUE, BEST_EPOCH = "device_seconds", "best_value", "best_epoch"
WIDTH = "width"  # the model.width a ``type: fit`` space fitted to the budget (None: even the narrowest broke it)

# trial system attrs: structured values the table does not show
WARM_START = "hps:warm_start"  # the warm start a queued trial came from (its label)
PROBLEM = "hps:problem"  # what went wrong after a trial trained (its value stands), e.g. keeping its weights
WHY = "hps:why"  # the whole reason a trial was pruned or failed, one line (its dashboard note says it too)
CONFIG, DATA, WORKER = "hps:config", "hps:data", "hps:worker"
BUDGET = "hps:budget"  # every figure the meter measured: params, model_bytes, macs, flops, epochs, train_memory_mb
HISTORY = "hps:history"  # every figure of every epoch: val_acc/val_loss, train_loss, lr, images_per_s (the live view)
CHECKPOINT, RESUMED_FROM = "hps:checkpoint", "hps:resumed_from"
WEIGHTS, STORAGE_DTYPE = "hps:weights", "hps:storage_dtype"  # the kept weights' artifact id; their dtype
FITTED_WIDTH, BUDGET_EXCESS, CHECKPOINT_SECONDS = "hps:fitted_width", "hps:budget_excess", "hps:checkpoint_seconds"
CONSTRAINTS_LIST = "constraints"  # the list form optuna-dashboard 0.21 reads (see README: Dashboard)
ARTIFACT_PREFIX = "artifacts:"  # Optuna's system attr for an uploaded artifact's meta
RETRY_OF, RETRY_HISTORY = "failed_trial", "retry_history"  # Optuna's names: the trial a retry retries; the chain
RECHECK_OF = "hps:recheck_of"  # a recheck: the search trial it trains again with another seed (``study.recheck``)

# study system attrs
SPACE = "hps:space"  # the space the study was run with (overrides applied)
DEFINITION = "hps:definition"  # what defines its trials: {"hash", "parts"}; each trial records the hash it ran under
DEFINITIONS = "hps:definitions"  # the history: [{"hash", "changed", "at"}], one entry per --allow-change
FAILED, STOPPED = "hps:failed", "hps:stopped"  # why the last run stopped early (None once a new run starts)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# where studies written before this layout kept them (user attrs)
_OLD_NAMES = {CONFIG: "config", DATA: "data", WORKER: "worker", CHECKPOINT: "checkpoint", RESUMED_FROM: "resumed_from",
              WEIGHTS: "weights", STORAGE_DTYPE: "storage_dtype", WARM_START: "warm_start"}


def trial_info(t: FrozenTrial, key: str, default: Any = None) -> Any:
    """A structured value hps stored on a trial (``CONFIG``, ``DATA``, ``WORKER``, ...)."""
    if key in t.system_attrs:
        return t.system_attrs[key]
    return t.user_attrs.get(_OLD_NAMES.get(key, key), default)


def fitted_width(t: FrozenTrial) -> float | None:
    """The width a ``type: fit`` space fitted to the budget for this trial (None if it has none)."""
    return t.system_attrs.get(FITTED_WIDTH, t.user_attrs.get(WIDTH))


def shown_params(t: FrozenTrial) -> dict[str, Any]:
    """A trial's params as a user reads them: the sampled ones, and ``model.width (fit)`` when the
    width was fitted to the budget (it is no Optuna param: the sampler never draws it)."""
    width = fitted_width(t)
    return {**t.params, "model.width (fit)": width} if width is not None else dict(t.params)


def reason(t: FrozenTrial) -> str | None:
    """Why a trial was pruned or failed, in full (None if it was not, or stored nothing)."""
    return t.system_attrs.get(WHY) or t.user_attrs.get(PRUNE_REASON) or t.user_attrs.get(FAIL_REASON)


def set_reason(trial: optuna.Trial, key: str, cause: str, text: str) -> None:
    """Store why a running trial ends: ``key`` (``PRUNE_REASON`` or ``FAIL_REASON``) gets the cause
    as one token (a table column that never wraps), ``WHY`` the whole line."""
    trial.set_user_attr(key, cause)
    set_trial_info(trial, WHY, text)


def retry_note(t: FrozenTrial) -> str:
    """For a retry: which trial it retries and where it resumed ("retry of trial 3, resumed at
    epoch 2"; "..., from scratch: <why>"); "" for any other trial."""
    if RETRY_OF not in t.system_attrs:
        return ""
    resumed = trial_info(t, RESUMED_FROM) or {}
    note = f"retry of trial {t.system_attrs[RETRY_OF]}"
    if resumed.get("epoch"):
        return f"{note}, resumed at epoch {resumed['epoch']}"
    why = resumed.get("missing") or resumed.get("unreadable")
    return f"{note}, from scratch: {why}" if why else note


def sign(study: optuna.Study | Any) -> int:
    """+1 when the study's (first) objective is maximized, else -1."""
    return 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by state name (``complete``, ``pruned``, ``fail``, ``running``, ``waiting``), non-zero only."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def named_constraints(t: FrozenTrial) -> dict[str, float]:
    """The trial's budget constraints by limit name (without the dashboard's list copy: ``'0'``, ``'1'``)."""
    return {k: v for k, v in t.constraints.items() if not k.isdigit()}


def feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in named_constraints(t).values())


def current(study: optuna.Study) -> Callable[[FrozenTrial], bool]:
    """Whether a trial ran under the study's current definition (trials from before definitions
    were recorded count as the first one)."""
    attrs = study_attrs(study)
    now = (attrs.get(DEFINITION) or {}).get("hash")
    history = attrs.get(DEFINITIONS) or []
    first = history[0]["hash"] if history else now
    return lambda t: now is None or t.system_attrs.get(DEFINITION, first) == now


def finished_by_definition(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> tuple[int, int]:
    """Finished (COMPLETE or PRUNED) search trials (rechecks do not count): (under the current
    definition, under earlier ones)."""
    same = current(study)
    done = [same(t) for t in (study.get_trials(deepcopy=False) if trials is None else trials)
            if t.state in FINISHED and RECHECK_OF not in t.system_attrs]
    return sum(done), len(done) - sum(done)


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial that meets the budget, among the search trials of the study's
    current definition (multi-objective: the Pareto trial with the best first objective). Once some
    are rechecked (``study.recheck``), the best rechecked one by its mean over its runs
    (:func:`runs_of`): one lucky run no longer decides."""
    done = search_trials(study)
    if not done:
        return None
    if len(study.directions) > 1:
        pareto = {t.number for t in study.best_trials}
        done = [t for t in done if t.number in pareto] or done
    s = sign(study)
    runs = runs_of(study)
    if rechecked := [t for t in done if len(runs.get(t.number, [])) > 1]:
        return max(rechecked, key=lambda t: (s * statistics.mean(runs[t.number]), -t.number))
    return max(done, key=lambda t: (s * t.values[0], -t.number))


def search_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE search trials (not rechecks) of the current definition that meet the budget."""
    same = current(study)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t) and trial_info(t, CONFIG) is not None and same(t) and RECHECK_OF not in t.system_attrs]


def runs_of(study: optuna.Study) -> dict[int, list[float]]:
    """Each rechecked search trial's values: its own first, then its rechecks' (COMPLETE ones)."""
    same = current(study)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    runs: dict[int, list[float]] = {}
    for t in trials:
        origin = by_number.get(t.system_attrs.get(RECHECK_OF, -1))
        if origin is not None and t.state == TrialState.COMPLETE and same(t) and origin.state == TrialState.COMPLETE:
            runs.setdefault(origin.number, [origin.values[0]]).append(t.values[0])
    return runs


def rechecks_due(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best ``k`` search trials (distinct params) with no recheck yet, finished or queued."""
    taken = {t.system_attrs[RECHECK_OF] for t in study.get_trials(deepcopy=False)
             if RECHECK_OF in t.system_attrs and t.state != TrialState.FAIL}
    s, top, seen = sign(study), [], set()
    for t in sorted(search_trials(study), key=lambda t: (-s * t.values[0], t.number)):
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            top.append(t)
    return [t for t in top[:k] if t.number not in taken]


def best_note(study: optuna.Study, t: FrozenTrial) -> str:
    """``value 0.6012``, or for a rechecked trial ``mean 0.6012 of 2 runs (0.6100, 0.5924)``."""
    return score_note(t.values[0], runs_of(study).get(t.number, []))


def score_note(value: float, runs: list[float]) -> str:
    if len(runs) < 2:
        return f"value {value:.4f}"
    return f"mean {statistics.mean(runs):.4f} of {len(runs)} runs ({', '.join(f'{v:.4f}' for v in runs)})"


def recheck_count(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> int:
    """Finished rechecks of the study's current definition (the search's target does not count them)."""
    same = current(study)
    return sum(RECHECK_OF in t.system_attrs and t.state in FINISHED and same(t)
               for t in (study.get_trials(deepcopy=False) if trials is None else trials))


def stored_figures(t: FrozenTrial) -> dict[str, float]:
    """Every budget figure the meter measured for a trial (empty if it never got that far)."""
    figures = trial_info(t, BUDGET)
    if figures is None:  # studies written before hps:budget: one user attr each
        figures = {k: t.user_attrs[k] for k in ("params", "model_bytes", "macs", "flops", "epochs", "train_memory_mb")
                   if k in t.user_attrs}
    return dict(figures)


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attrs (Optuna 5 has no ``Study.system_attrs``)."""
    return study_system_attrs(study)


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    set_study_system_attr(study, key, value)


def stop_reasons(attrs: Mapping[str, Any]) -> list[str]:
    """Why the study's last run stopped early, if it did (``attrs``: the study's system attrs)."""
    return [str(attrs[k]) for k in (FAILED, STOPPED) if attrs.get(k)]


def human(n: float, digits: int = 3) -> str:
    """7100000 -> '7.1M', 20000000 -> '20M', 512 -> '512'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.{digits}g}{unit}"
    return f"{n:.{digits}g}"


def set_trial_info(trial: optuna.Trial, key: str, value: Any) -> None:
    """Store a structured value on a running trial as a system attr (``CONFIG``, ``DATA``, ...)."""
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)
