"""A space's study: created or loaded with the space's sampler and pruner (built once), the
space recorded on it, warm starts enqueued once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.storages import BaseStorage

from hps.search.errors import StudyError
from hps.search.record import FAILED, SPACE, WARM_START, set_study_attr, study_attrs

if TYPE_CHECKING:  # hps status and export load studies without the trainer (torch)
    from hps.search.space import Space


def open_study(space: Space, storage: BaseStorage, *, index: int = 0) -> optuna.Study:
    """Create the space's study, or load it to resume. The sampler's seed moves with the trials
    already run and with ``index`` (one per worker), so no two workers and no resumed run redraw
    the same random points. The first opening stores the space (``hps:space``) and enqueues the
    warm starts."""
    try:
        ran = storage.get_n_trials(storage.get_study_id_from_name(space.name))
    except KeyError:
        ran = 0
    study = optuna.create_study(study_name=space.name, storage=storage, load_if_exists=True,
                                directions=space.directions,  # type: ignore[arg-type]
                                sampler=space.make_sampler(ran + 7919 * index), pruner=space.make_pruner())
    if [d.name.lower() for d in study.directions] != space.directions:
        raise StudyError(f"study {space.name!r} exists with directions "
                         f"{[d.name.lower() for d in study.directions]}, the space asks {space.directions}")
    attrs = study_attrs(study)
    if SPACE not in attrs and "hps_space" not in study.user_attrs:
        set_study_attr(study, SPACE, space.to_dict())
        for label, params in space.warm_start:
            before = storage.get_n_trials(study._study_id)
            study.enqueue_trial(params, skip_if_exists=True)
            queued = study.get_trials(deepcopy=False)[before:]
            for t in queued:  # a system attr: Optuna's enqueue_trial takes user attrs only, a table column
                storage.set_trial_system_attr(t._trial_id, WARM_START, label)
    return study


def begin_run(study: optuna.Study) -> None:
    """A new run: the last run's stop on failures is history."""
    if study_attrs(study).get(FAILED):
        set_study_attr(study, FAILED, None)


def load_study(name: str, storage: BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage; studies: {names}") from None
