"""A table of real learning curves from hps's own trainer, for replaying searches (issue 31).

    python bench/curves.py record --out out/curves.jsonl [--configs 200 --epochs 12 --seeds 0 1 --procs 1]
    python bench/curves.py summary out/curves.jsonl

The table recorded so far on this CPU (the mini set, 12 epochs, seeds 0 and 1) is
``bench/curves/cpu-mini.jsonl``: pass it as ``--out`` to go on where it stopped.

``record`` draws configs at random from one space in the spirit of the shipped ones (airnet at
small widths under a params budget: width, lr, weight decay, schedule, dropout, label smoothing,
augmentation strength), the i-th config always the same (a seeded random sampler asked i times),
and trains each feasible one for ``--epochs`` with each seed in ``--seeds`` on ``$HPS_DATA``
(validation carved from train; the test split scored once at the end). One JSON line per (config,
seed): params, budget figures, val accuracy and loss per epoch, seconds per epoch, test accuracy.
An infeasible config gets one line with its budget figures and the limit it breaks, and never
trains. Lines are appended as they finish, so a killed recording resumes where it stopped: a
rerun skips every (config, seed) already in the file. ``--procs`` runs that many trainings at once,
one thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

SPACE: dict[str, Any] = {
    "study": {"name": "curves", "trials": 200, "sampler": {"name": "random"}, "pruner": {"name": "none"}},
    "base": {"model": {"name": "airnet", "width": 0.25}, "data": {"val_fraction": 0.2},
             "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
             "train": {"epochs": 12, "batch_size": 128, "device": "cpu", "precision": "fp32"}},
    "space": {"model.width": {"low": 0.125, "high": 0.35},
              "optimizer.lr": {"low": 0.005, "high": 0.5, "log": True},
              "optimizer.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
              "schedule.name": {"choices": ["cosine", "onecycle"]},
              "model.dropout": {"low": 0.0, "high": 0.3},
              "train.label_smoothing": {"low": 0.0, "high": 0.2},
              "augment.strength": {"low": 0.0, "high": 1.0}},
    "budget": {"max_params": 150_000},  # cuts the upper widths: about a fifth of the draws are infeasible
}


def draw(n: int, epochs: int, subset: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` configs of the space (the same on every call): params, config, feasibility."""
    import optuna

    import hps
    from hps.search.budget import check
    from hps.search.space import suggest
    from hps.trainers import config_to_dict

    over: dict[str, Any] = {"fixed.train.epochs": epochs} | ({"fixed.data.subset": subset} if subset else {})
    space = hps.load_space(SPACE, overrides=over)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for i in range(n):
        trial = study.ask()
        cfg = suggest(space, trial)
        c = check(cfg, space.budget)
        out.append({"config": i, "params": trial.params, "train_config": config_to_dict(cfg),
                    "budget": c.figures, "violations": c.violations})
        study.tell(trial, 0.0)
    return out


def train_one(task: tuple[dict[str, Any], int]) -> dict[str, Any]:
    import torch

    from hps.trainers import config_from_dict, train

    torch.set_num_threads(1)
    entry, seed = task
    raw = json.loads(json.dumps(entry["train_config"]))
    raw["train"]["seed"] = seed
    t0 = time.perf_counter()
    r = train(config_from_dict(raw, f"config {entry['config']}"), test=True)
    return {"config": entry["config"], "seed": seed, "params": entry["params"], "budget": entry["budget"],
            "feasible": True, "val_acc": [h["val_acc"] for h in r.history], "val_loss": [h["val_loss"] for h in r.history],
            "epoch_seconds": [round(h["epoch_seconds"], 3) for h in r.history], "test_acc": r.test_acc,
            "wall_seconds": round(time.perf_counter() - t0, 2)}


def record(out: Path, configs: int, epochs: int, seeds: list[int], procs: int, subset: int | None = None) -> None:
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["config"], row["seed"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = draw(configs, epochs, subset)
    tasks = []
    with out.open("a") as f:
        for e in entries:
            if e["violations"] and (e["config"], None) not in done:
                f.write(json.dumps({"config": e["config"], "seed": None, "params": e["params"], "budget": e["budget"],
                                    "feasible": False, "violations": e["violations"]}) + "\n")
            elif not e["violations"]:
                tasks += [(e, s) for s in seeds if (e["config"], s) not in done]
    print(f"{out}: {len(done)} lines there, {len(tasks)} trainings to go", flush=True)
    with mp.get_context("spawn").Pool(procs) as pool, out.open("a") as f:
        for row in pool.imap_unordered(train_one, tasks):
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"config {row['config']} seed {row['seed']}: val {row['val_acc'][-1]:.3f} test {row['test_acc']:.3f} "
                  f"({row['wall_seconds']:.0f} s)", flush=True)


def summary(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    trained = [r for r in rows if r["feasible"]]
    by: dict[int, list[dict[str, Any]]] = {}
    for r in trained:
        by.setdefault(r["config"], []).append(r)
    both = {c: rs for c, rs in by.items() if len(rs) >= 2}
    noise = [abs(rs[0]["val_acc"][-1] - rs[1]["val_acc"][-1]) for rs in both.values()]
    return {"lines": len(rows), "infeasible": sum(not r["feasible"] for r in rows), "configs_trained": len(by),
            "configs_with_two_seeds": len(both), "seed_noise_val_median": round(statistics.median(noise), 4) if noise else None,
            "best_mean_val": round(max((statistics.mean(r["val_acc"][-1] for r in rs) for rs in both.values()), default=0), 4),
            "epoch_seconds_median": (round(statistics.median(s for r in trained for s in r["epoch_seconds"]), 2)
                                     if trained else None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--configs", type=int, default=200)
    r.add_argument("--epochs", type=int, default=12)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--procs", type=int, default=1)
    r.add_argument("--subset", type=int, help="train on this many images (the tests' rehearsal)")
    s = sub.add_parser("summary")
    s.add_argument("path", type=Path)
    args = p.parse_args()
    if args.cmd == "record":
        record(args.out, args.configs, args.epochs, args.seeds, args.procs, args.subset)
    else:
        print(json.dumps(summary(args.path), indent=1))


if __name__ == "__main__":
    main()
