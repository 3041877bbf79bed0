"""Search quality at equal compute: hps vs random search vs Ray Tune + OptunaSearch + ASHA.

    python bench/search_quality.py [--budget 120 --seeds 0 1 2 --out out/search-bench]

Task: real CIFAR-10 images ($HPS_DATA, e.g. cifar10-mini.npz); validation carved from train, the
test split read only when each method's final best config is retrained. Space: airnet on the CPU,
width 0.25-1.0 under max_params 700k (which cuts the upper widths), lr, weight decay, schedule,
augmentation strength; at most 5 epochs a trial. Every method gets ``--budget`` seconds of
training (all trials together), one trial at a time, two CPU threads, per seed:

1. hps: TPE with constraints, ASHA pruning, the budget pre-screened (infeasible configs never train);
2. random: random search, no pruning, infeasible configs trained and discarded afterwards;
3. tune: Ray Tune Tuner + OptunaSearch (TPE) + ASHA; the trainable checks the budget with the
   meter and returns at once for an infeasible config (what a Tune user would write).

Writes ``results.json`` (curves of best feasible val accuracy vs cumulative training seconds,
seconds spent on infeasible configs, the final configs' test accuracy) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import yaml

from hps.search.budget import check
from hps.search.record import CONFIG, RECHECK_OF, best_feasible
from hps.search.run import run
from hps.search.space import Budget, load_space
from hps.trainers import config_from_dict, train, with_overrides

BASE = {"model": {"name": "airnet", "width": 0.5}, "data": {"val_fraction": 0.2},
        "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "cosine"},
        "train": {"epochs": 5, "batch_size": 128, "device": "cpu"}}
SPACE = {"model.width": {"low": 0.25, "high": 1.0}, "optimizer.lr": {"low": 0.005, "high": 0.5, "log": True},
         "optimizer.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
         "schedule.name": {"choices": ["cosine", "onecycle"]}, "augment.strength": {"low": 0.0, "high": 1.0}}
LIMITS = {"max_params": 700_000, "max_epochs": 5}
EPOCHS = [5]  # set from --epochs; read by the Tune trainable and scheduler
HPS_STUDY: dict[str, Any] = {}  # --min-resource / --recheck: hps's study settings (else hps's defaults)


def _space_file(tmp: Path, name: str, seed: int, budget_s: float, method: str) -> Path:
    hps = method.startswith("hps")  # "hps", or "hps-recheck": hps with study.recheck: 2
    spec = {"study": {"name": name, "trials": 100_000, "seed": seed,
                      "sampler": {"name": "tpe" if hps else "random"},
                      "pruner": {"name": "asha", "args": HPS_STUDY.get("pruner_args", {})} if hps else {"name": "none"},
                      **({"recheck": HPS_STUDY["recheck"]} if hps and "recheck" in HPS_STUDY else {}),
                      **({"recheck": 2} if method == "hps-recheck" else {})},
            "base": BASE, "space": SPACE,
            "budget": {**(LIMITS if hps else {}), "max_device_hours": budget_s / 3600}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _curve(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(cumulative training seconds, best feasible val acc so far) after each trial."""
    spent, best, out = 0.0, 0.0, []
    for r in rows:
        spent += r["seconds"]
        if r["feasible"] and r["complete"]:
            best = max(best, r["val_acc"])
        out.append((round(spent, 2), best))
    return out


def run_study(method: str, seed: int, budget_s: float, url: str, tmp: Path) -> list[dict[str, Any]]:
    name = f"bench-{method}-{seed}-{uuid.uuid4().hex[:4]}"
    run(load_space(_space_file(tmp, name, seed, budget_s, method)), url, trials=100_000, progress="none")
    rows = []
    study = optuna.load_study(study_name=name, storage=url)
    handed = best_feasible(study)  # what `hps export` writes (after rechecks, their best mean)
    for t in study.get_trials(deepcopy=False):
        if not t.state.is_finished() or CONFIG not in t.system_attrs:
            continue
        cfg = config_from_dict(t.system_attrs[CONFIG])
        rows.append({"seconds": float(t.user_attrs.get("device_seconds", 0.0)),
                     "feasible": check(cfg, Budget(**LIMITS)).feasible,
                     "complete": t.state == optuna.trial.TrialState.COMPLETE,
                     "val_acc": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                     "config": t.system_attrs[CONFIG], "state": t.state.name,
                     "intermediate": len(t.intermediate_values), "recheck_of": t.system_attrs.get(RECHECK_OF),
                     "handed": handed is not None and t.number == handed.number})
    return rows


def _tune_trainable(config: dict[str, Any], epochs: int) -> None:
    from ray import tune

    cfg = with_overrides(config_from_dict(BASE), {**config, "train.epochs": epochs})
    if not check(cfg, Budget(**{**LIMITS, "max_epochs": epochs})).feasible:
        tune.report({"val_acc": 0.0, "feasible": False, "train_seconds": 0.0})
        return
    start = time.perf_counter()
    train(cfg, report=lambda e, m: tune.report({"val_acc": m["val_acc"], "feasible": True, "epoch": e,
                                                 "train_seconds": time.perf_counter() - start}))


def run_tune(seed: int, budget_s: float, url: str) -> list[dict[str, Any]]:
    import ray
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from ray import tune

    if not ray.is_initialized():  # a private Ray: never join a cluster that happens to run here
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    dists = {k: CategoricalDistribution(v["choices"]) if "choices" in v else
             FloatDistribution(v["low"], v["high"], log=v.get("log", False)) for k, v in SPACE.items()}
    search = OptunaSearch(dists, metric="val_acc", mode="max", seed=seed,
                          storage=optuna.storages.RDBStorage(url), study_name=f"bench-tune-{seed}-{uuid.uuid4().hex[:4]}")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_tune_trainable, epochs=EPOCHS[0]), {"cpu": 2}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=-1, max_concurrent_trials=1, reuse_actors=True,
                                    time_budget_s=budget_s * 1.3,
                                    scheduler=ASHAScheduler(metric="val_acc", mode="max", max_t=EPOCHS[0], grace_period=1,
                                                            reduction_factor=3, time_attr="training_iteration")),
        run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for result in sorted(grid, key=lambda r: (r.metrics or {}).get("timestamp", 0)):
        m = result.metrics or {}
        if "val_acc" not in m:  # the trial never reported (stopped by the time budget while starting)
            continue
        full = m.get("epoch", 0) == EPOCHS[0] or not m.get("feasible", True)
        rows.append({"seconds": float(m.get("train_seconds", 0.0)), "feasible": bool(m.get("feasible", True)),
                     "complete": full and bool(m.get("feasible", True)), "val_acc": m.get("val_acc"),
                     "config": result.config, "state": "TUNE",
                     "intermediate": m.get("epoch", 0)})
    spent, kept = 0.0, []
    for r in rows:  # equal compute: keep trials that started within the budget
        if spent >= budget_s:
            break
        kept.append(r)
        spent += r["seconds"]
    return kept


def final_test(rows: list[dict[str, Any]], seed: int, tune_rows: bool) -> dict[str, Any] | None:
    """Retrain the config the method hands over (hps: its export's choice; the others: the best
    complete val) and score it on the test split."""
    best = next((r for r in rows if r.get("handed")), None) or \
        max((r for r in rows if r["feasible"] and r["complete"]), key=lambda r: r["val_acc"], default=None)
    if best is None:
        return None
    cfg = with_overrides(config_from_dict(BASE), best["config"]) if tune_rows else config_from_dict(best["config"])
    cfg = with_overrides(cfg, {"train.seed": seed})
    result = train(cfg, test=True)
    return {"val_acc": result.val_acc, "test_acc": result.test_acc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=120, help="training seconds per method and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["hps", "random", "tune"], help="hps, hps-recheck, random, tune")
    p.add_argument("--out", type=Path, default=Path("out/search-bench"))
    p.add_argument("--no-retrain", action="store_true", help="skip the final test-split retrain")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial (and the epoch budget)")
    p.add_argument("--min-resource", type=int, help="hps's ASHA: epochs before the first rung (default: hps's)")
    p.add_argument("--recheck", type=int, help="hps's study.recheck (default: hps's)")
    args = p.parse_args()
    BASE["train"]["epochs"] = LIMITS["max_epochs"] = EPOCHS[0] = args.epochs
    if args.min_resource is not None:
        HPS_STUDY["pruner_args"] = {"min_resource": args.min_resource}
    if args.recheck is not None:
        HPS_STUDY["recheck"] = args.recheck
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(args.out / 'studies.db').resolve()}"
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, Any] = {"budget_s": args.budget, "seeds": args.seeds, "methods": {}}
    by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # methods interleaved within a seed: the machine's load falls on each alike
        for method in args.methods:
            rows = run_tune(seed, args.budget, url) if method == "tune" else run_study(method, seed, args.budget, url, tmp)
            curve = _curve(rows)
            by_method[method].append({
                "seed": seed, "trials": len(rows), "curve": curve, "best_val_acc": curve[-1][1] if curve else 0.0,
                "infeasible_seconds": round(sum(r["seconds"] for r in rows if not r["feasible"]), 2),
                "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
                "final": None if args.no_retrain else final_test(rows, seed, method == "tune"), "rows": rows})
            print(f"seed {seed} {method}: {by_method[method][-1]['final']}", file=sys.stderr, flush=True)
    for method, runs in by_method.items():
        tests = [r["final"]["test_acc"] for r in runs if r["final"]]
        results["methods"][method] = {
            "runs": runs,
            "best_val_acc_mean": round(statistics.mean(r["best_val_acc"] for r in runs), 4),
            "test_acc_mean": round(statistics.mean(tests), 4) if tests else None,
            "test_acc_spread": round(max(tests) - min(tests), 4) if len(tests) > 1 else None,
            "infeasible_seconds_mean": round(statistics.mean(r["infeasible_seconds"] for r in runs), 2)}
    if "hps" in results["methods"] and "random" in results["methods"]:
        results["hps_seconds_to_reach_random_best"] = [
            _time_to(h["curve"], r["best_val_acc"]) for h, r in
            zip(results["methods"]["hps"]["runs"], results["methods"]["random"]["runs"], strict=True)]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, args.out / "curves.png")
    summary = {m: {k: v for k, v in d.items() if k != "runs"} for m, d in results["methods"].items()}
    print(json.dumps({"budget_s": args.budget, **summary,
                      "hps_seconds_to_reach_random_best": results.get("hps_seconds_to_reach_random_best")}, indent=2))


def _time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, best in curve if best >= target), None)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"hps": "tab:blue", "random": "tab:orange", "tune": "tab:green", "hps-recheck": "tab:purple"}
    for method, data in results["methods"].items():
        for i, one in enumerate(data["runs"]):
            xs, ys = zip(*one["curve"], strict=True) if one["curve"] else ((), ())
            ax.step(xs, ys, where="post", color=colors.get(method), alpha=0.8, label=method if i == 0 else None)
    ax.set_xlabel("cumulative training seconds (all trials)")
    ax.set_ylabel("best feasible val accuracy")
    ax.set_title(f"search quality at {results['budget_s']:.0f} s of training per run")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
