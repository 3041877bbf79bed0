"""Storage URL -> Optuna storage; studies with the sampler and pruner a space names.

One code path for SQLite (the embedded default) and PostgreSQL. Heartbeats are on, so a trial
whose worker died becomes FAIL and its params are retried once as a WAITING trial.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from search.errors import StudyError
from search.space import Space, _pruner_class, _sampler_class

DEFAULT_STORAGE = "sqlite:///hps.db"
HEARTBEAT_SECONDS = int(os.environ.get("HPS_HEARTBEAT_SECONDS", "30"))
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(url: str | None = None) -> str:
    """``--storage``, else ``$HPS_STORAGE``, else ``sqlite:///hps.db``; a bare ``postgresql://``
    gets the psycopg2 driver named (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = url or os.environ.get("HPS_STORAGE") or DEFAULT_STORAGE
    url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    if url.startswith("sqlite:///") and not url.startswith(("sqlite:////", "sqlite:///:memory:")):  # absolute path
        url = "sqlite:///" + os.path.abspath(url.removeprefix("sqlite:///"))
    return url


def redact(url: str) -> str:
    """The URL without its password, for logs and provenance."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def get_storage(url: str | None = None, *, pool_size: int = 2, heartbeat: bool = True) -> RDBStorage:
    """An RDB storage with pre-ping (survives a database restart) and a small, bounded pool:
    each process holds at most ``pool_size`` connections (+1 overflow) to the database."""
    url = storage_url(url)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"application_name": "hps"}
    if not url.startswith("sqlite"):
        engine.update(pool_size=pool_size, max_overflow=1, pool_recycle=300)
    hb: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and relied on here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                hb = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": 2 * HEARTBEAT_SECONDS,
                      "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
            return RDBStorage(url, engine_kwargs=engine, **hb)
    except Exception as e:
        raise StudyError(f"cannot open storage {redact(url)}: {str(e).splitlines()[0]}") from None


def make_sampler(space: Space, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """``seed_offset`` keeps workers, and resumed runs, from redrawing the same random points."""
    s = space.spec.study
    args = dict(s.sampler.args)
    if s.sampler.name == "tpe":  # hps defaults: learn jointly, do not hand two workers one point
        args.setdefault("multivariate", True)
        args.setdefault("constant_liar", True)
        args.setdefault("n_startup_trials", min(10, max(3, s.trials // 4)))
    return _sampler_class(s.sampler.name)(seed=s.seed + seed_offset, **args)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    s = space.spec.study
    args = dict(s.pruner.args)
    if s.pruner.name == "asha":
        args.setdefault("min_resource", 1)
        args.setdefault("reduction_factor", 3)
    if s.pruner.name == "hyperband":
        args.setdefault("max_resource", space.base.train.epochs)
    return _pruner_class(s.pruner.name)(**args)


def open_study(space: Space, storage: RDBStorage) -> optuna.Study:
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


def load_study(name: str, storage: RDBStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage; studies: {names}") from None


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
