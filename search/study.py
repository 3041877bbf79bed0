"""Studies with the sampler and pruner a space names; warm starts enqueued once."""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage

from search.errors import StudyError
from search.space import Space

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def make_sampler(space: Space, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """``seed_offset`` keeps workers, and resumed runs, from redrawing the same random points."""
    return space.make_sampler(seed_offset)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    return space.make_pruner()


def open_study(space: Space, storage: BaseStorage) -> optuna.Study:
    """Create the space's study, or load it to resume; warm-start params are enqueued once."""
    study = optuna.create_study(study_name=space.name, storage=storage, load_if_exists=True,
                                directions=space.directions,  # type: ignore[arg-type]
                                sampler=make_sampler(space), pruner=make_pruner(space))
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
