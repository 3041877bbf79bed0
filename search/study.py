"""Studies with the sampler and pruner a space names; warm starts enqueued once."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.errors import StudyError
from search.space import Space

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# study user attrs that say why a run stopped early: trials kept failing (None once a new run
# starts), or the study's compute budget is spent
FAILED_ATTR, STOPPED_ATTR = "failed", "stopped"


def stop_reasons(user_attrs: dict[str, Any]) -> list[str]:
    """Why the study's last run stopped early, if it did."""
    return [str(user_attrs[k]) for k in (FAILED_ATTR, STOPPED_ATTR) if user_attrs.get(k)]


def open_study(space: Space, storage: BaseStorage) -> optuna.Study:
    """Create the space's study, or load it to resume; warm-start params are enqueued once."""
    study = optuna.create_study(study_name=space.name, storage=storage, load_if_exists=True,
                                directions=space.directions,  # type: ignore[arg-type]
                                sampler=space.make_sampler(), pruner=space.make_pruner())
    if [d.name.lower() for d in study.directions] != space.directions:
        raise StudyError(f"study {space.name!r} exists with directions "
                         f"{[d.name.lower() for d in study.directions]}, the space asks {space.directions}")
    if "hps_space" not in study.user_attrs:
        study.set_user_attr("hps_space", space.to_dict())
        for label, params in space.warm_start:
            study.enqueue_trial(params, user_attrs={"warm_start": label}, skip_if_exists=True)
    return study


def load_study(name: str, storage: BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage; studies: {names}") from None


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
