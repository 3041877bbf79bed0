"""Orchestration overhead: hps's Ray executor vs Ray Tune + OptunaSearch + ASHA, same Postgres.

    python bench/orchestration.py [--trials 200 --workers 4 --storage postgresql+psycopg2://...]

The objective trains nothing: it reports a synthetic 3-step curve, so the wall time is all
orchestration (sampling, storage, scheduling). Both run on one local Ray started once, with
``--workers`` concurrent trials of 0.5 CPU each; Tune gets ``reuse_actors=True`` (its best
setting; its default starts an actor per trial). Reports per-trial overhead (ms per trial slot:
wall x workers / trials; "steady": the same from the first trial's start to the last trial's end,
so worker start-up is excluded), trials/s, and the trial states each leaves in the database.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import yaml

STEPS = 3


def curve(x: float, y: float, step: int) -> float:
    return (1 - math.exp(-step)) * (1 - (x - 0.3) ** 2 - (y - 0.7) ** 2)


def hps_objective(trial: optuna.Trial) -> float:
    x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
    value = 0.0
    for step in range(1, STEPS + 1):
        value = curve(x, y, step)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def tune_trainable(config: dict[str, float]) -> None:
    from ray import tune

    for step in range(1, STEPS + 1):
        tune.report({"score": curve(config["x"], config["y"], step)})


def from_db(url: str, name: str, workers: int) -> dict[str, object]:
    """Trial states, and the steady-state overhead: first trial start to last trial end (worker
    start-up excluded), as ms per trial slot."""
    from hps.search.storage import get_storage

    trials = optuna.load_study(study_name=name, storage=get_storage(url, heartbeat=False)).get_trials(deepcopy=False)
    span = (max(t.datetime_complete for t in trials if t.datetime_complete)
            - min(t.datetime_start for t in trials if t.datetime_start)).total_seconds()
    return {"steady_ms_per_trial_slot": round(span * workers / len(trials) * 1000),
            "states_in_db": dict(collections.Counter(t.state.name for t in trials))}


def run_hps(url: str, trials: int, workers: int) -> tuple[float, str]:
    from hps.search.run import run
    from hps.search.space import load_space

    name = f"bench-hps-{uuid.uuid4().hex[:6]}"
    spec = {"study": {"name": name, "trials": trials, "sampler": {"name": "tpe"},
                      "pruner": {"name": "asha", "args": {"min_resource": 1, "reduction_factor": 3}}},
            "base": {"model": {"name": "airnet"}}, "space": {}}
    path = Path(tempfile.mkdtemp()) / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    run(load_space(path), url, trials=trials, ray="local", workers=workers, cpus_per_trial=0.5, progress="none",
        objective=hps_objective)
    return time.perf_counter() - t0, name


def run_tune(url: str, trials: int, workers: int) -> tuple[float, str]:
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    name = f"bench-tune-{uuid.uuid4().hex[:6]}"
    search = OptunaSearch({"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}, metric="score", mode="max",
                          storage=optuna.storages.RDBStorage(url), study_name=name)
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": 0.5}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=workers,
                                    reuse_actors=True,
                                    scheduler=ASHAScheduler(metric="score", mode="max", max_t=STEPS, grace_period=1,
                                                            reduction_factor=3)),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
    )
    t0 = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - t0, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--storage", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test",
                   help="Postgres for Tune's OptunaSearch (RDBStorage) and, by default, for hps")
    p.add_argument("--hps-storage", default=None, help="hps's storage URL [--storage]")
    p.add_argument("--only", choices=["hps", "tune"], default=None)
    args = p.parse_args()
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    out = {}
    from hps.search.storage import get_storage

    for method, fn in (("hps", run_hps), ("tune", run_tune)):
        if args.only and method != args.only:
            continue
        url = (args.hps_storage or args.storage) if method == "hps" else args.storage
        wall, name = fn(url, args.trials, args.workers)
        out[method] = {"wall_s": round(wall, 1), "trials_per_s": round(args.trials / wall, 2),
                       "ms_per_trial_slot": round(wall * args.workers / args.trials * 1000),
                       "storage": url.split("://")[0], **from_db(url, name, args.workers)}
        optuna.delete_study(study_name=name, storage=get_storage(url, heartbeat=False))
    if "hps" in out and "tune" in out:
        out["hps_vs_tune"] = {k: round(out["hps"][k] / out["tune"][k], 3)  # type: ignore[operator]
                              for k in ("ms_per_trial_slot", "steady_ms_per_trial_slot")}
    print(json.dumps({"trials": args.trials, "workers": args.workers, **out}, indent=2))


if __name__ == "__main__":
    main()
