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

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# trial user attrs: short scalars, one dashboard column each
PRUNE_REASON, FAIL_REASON = "prune_reason", "fail_reason"
DEVICE_SECONDS, BEST_VALUE, BEST_EPOCH = "device_seconds", "best_value", "best_epoch"
EPOCH, IMAGES_PER_S = "epoch", "images_per_s"  # updated every epoch: the live view reads them
WARM_START, FITTED_WIDTH, BUDGET_EXCESS = "warm_start", "fitted_width", "budget_excess"
STORAGE_DTYPE, WEIGHTS, CHECKPOINT_SECONDS = "storage_dtype", "weights", "checkpoint_seconds"
FIGURES = ("params", "model_bytes", "macs", "flops", "epochs", "train_memory_mb")  # the budget figures

# trial system attrs: structured values the table does not show
CONFIG, DATA, WORKER = "hps:config", "hps:data", "hps:worker"
CHECKPOINT, RESUMED_FROM = "hps:checkpoint", "hps:resumed_from"
CONSTRAINTS_LIST = "constraints"  # the list form optuna-dashboard 0.21 reads (see README: Dashboard)
ARTIFACT_PREFIX = "artifacts:"  # Optuna's system attr for an uploaded artifact's meta

# study system attrs
SPACE = "hps:space"  # the space the study was run with (overrides applied)
FAILED, STOPPED = "hps:failed", "hps:stopped"  # why the last run stopped early (None once a new run starts)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_OLD_NAMES = {CONFIG: "config", DATA: "data", WORKER: "worker", CHECKPOINT: "checkpoint",
              RESUMED_FROM: "resumed_from"}  # where studies written before 0.2 kept them (user attrs)


def trial_info(t: FrozenTrial, key: str, default: Any = None) -> Any:
    """A structured value hps stored on a trial (``CONFIG``, ``DATA``, ``WORKER``, ...)."""
    if key in t.system_attrs:
        return t.system_attrs[key]
    return t.user_attrs.get(_OLD_NAMES.get(key, key), default)


def sign(study: optuna.Study | Any) -> int:
    """+1 when the study's (first) objective is maximized, else -1."""
    return 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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


def best_feasible(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial that meets the budget (multi-objective: the Pareto trial with the
    best first objective), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t) and trial_info(t, CONFIG) is not None]
    if not done:
        return None
    if len(study.directions) > 1:
        pareto = {t.number for t in study.best_trials}
        done = [t for t in done if t.number in pareto] or done
    s = sign(study)
    return max(done, key=lambda t: (s * t.values[0], -t.number))


def stored_figures(user_attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's budget figures, stored as one scalar user attr each (sortable in the dashboard)."""
    return {k: user_attrs[k] for k in FIGURES if k in user_attrs}


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attrs (Optuna 5 has no ``Study.system_attrs``)."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


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
