"""A space's study: created or loaded with the space's sampler and pruner (built once), the
space recorded on it, warm starts enqueued once."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage

from hps.search.errors import StudyError
from hps.search.optuna_compat import storage_of, study_id
from hps.search.record import DEFINITION, DEFINITIONS, FAILED, SPACE, WARM_START, set_study_attr, study_attrs

if TYPE_CHECKING:  # hps status and export load studies without the trainer (torch)
    from hps.search.space import Space


def open_study(space: Space, storage: BaseStorage, *, driver: bool = False,
               allow_change: bool = False) -> optuna.Study:
    """Create the space's study, or load it to resume. The sampler is seeded per trial number, so
    no two workers, runs or resumed runs draw the same random points.

    The driver (``driver=True``) also checks what defines the trials (:meth:`Space.definition`)
    against the study's: a rerun whose definition differs is refused (:class:`DefinitionChanged`,
    listing what changed) unless ``allow_change``, which records the change; trials then run under
    the new definition and only they are compared. It stores the space and enqueues each warm
    start once (one added to the space later is enqueued on the next run)."""
    study = optuna.create_study(study_name=space.name, storage=storage, load_if_exists=True,
                                directions=space.directions,  # type: ignore[arg-type]
                                sampler=space.make_sampler(), pruner=space.make_pruner())
    if [d.name.lower() for d in study.directions] != space.directions:
        raise StudyError(f"study {space.name!r} exists with directions "
                         f"{[d.name.lower() for d in study.directions]}, the space asks {space.directions}")
    if not driver:
        return study
    _check_definition(study, space, allow_change)
    set_study_attr(study, SPACE, space.to_dict())
    queued = {json.dumps(t.system_attrs.get("fixed_params") or t.params, sort_keys=True)
              for t in study.get_trials(deepcopy=False) if WARM_START in t.system_attrs or "warm_start" in t.user_attrs}
    for label, params in space.warm_start:
        if json.dumps(params, sort_keys=True) in queued:
            continue  # enqueued by an earlier run: once
        queue_trial(study, params, WARM_START, label)
    return study


def queue_trial(study: optuna.Study, params: dict[str, Any], key: str, value: Any) -> None:
    """Queue a trial of ``params`` marked with the system attr ``key`` (a warm start, a recheck)."""
    storage = storage_of(study)
    before = storage.get_n_trials(study_id(study))
    study.enqueue_trial(params, skip_if_exists=key == WARM_START)
    for t in study.get_trials(deepcopy=False)[before:]:  # a system attr: enqueue_trial takes user attrs only
        storage.set_trial_system_attr(t._trial_id, key, value)


class DefinitionChanged(StudyError):
    """A rerun whose space, budget, objectives or data differ from the study's."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two definitions, one ``key: old -> new`` each."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {json.dumps(a.get(k, '(none)'))} -> {json.dumps(b.get(k, '(none)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _check_definition(study: optuna.Study, space: Space, allow_change: bool) -> None:
    parts = space.definition()
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    space.definition_hash = digest
    attrs = study_attrs(study)
    stored = attrs.get(DEFINITION)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if stored is None:  # a new study (or one from before definitions were recorded): this is its first
        set_study_attr(study, DEFINITION, {"hash": digest, "parts": parts})
        set_study_attr(study, DEFINITIONS, [{"hash": digest, "changed": [], "at": now}])
        return
    if stored["hash"] == digest:
        return
    changed = changes(stored["parts"], parts)
    if not allow_change:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise DefinitionChanged(f"study {space.name!r} was run with another definition ({shown}); run it as a new study "
                                f"(--set study.name=...), or continue it with --allow-change (recorded; the best trial and "
                                f"exports then compare only trials of the new definition)")
    set_study_attr(study, DEFINITION, {"hash": digest, "parts": parts})
    set_study_attr(study, DEFINITIONS, [*(attrs.get(DEFINITIONS) or []), {"hash": digest, "changed": changed, "at": now}])


def begin_run(study: optuna.Study) -> None:
    """A new run: the last run's stop on failures is history."""
    if study_attrs(study).get(FAILED):
        set_study_attr(study, FAILED, None)


def load_study(name: str, storage: BaseStorage, where: str = "this storage") -> optuna.Study:
    """The study ``name``; :class:`StudyError` naming ``where`` (the storage URL, redacted) and the
    studies it holds if there is none."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StudyError(f"no study named {name!r} in {where}; studies: {names}") from None
