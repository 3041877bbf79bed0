"""Start-up of hps's read-only commands against ``python -c "import optuna"``, the floor any Optuna
tool pays, and against Optuna's own CLI reading the same storage (``optuna studies``). Each command
runs as a user runs it (a new process) on a small study in a SQLite file; the runs are interleaved
(floor, then each command, round after round) and the medians reported.

``--run``: the start-up of ``hps run`` instead, each run a new process on a new SQLite file:
- ``first step``: seconds from launching ``hps run`` (a 1-trial study of one step) to the end of
  the first trial's first optimizer step (a global step hook, installed before hps is imported);
- ``per over-budget trial``: 8 warm starts that break ``max_params`` (pruned before training), the
  study's wall time from the first trial's start to the last one's end over 8: distinct networks
  (8 widths) and the same network 8 times (8 learning rates).
``--compare DIR`` runs the same commands on another checkout (``DIR/src`` on PYTHONPATH), round by
round interleaved with this one: a before/after table on one machine.

    python bench/startup.py [--rounds 7]
    HPS_DATA=cifar10-mini.npz python bench/startup.py --run --rounds 5 [--compare /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml


def _study(url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="startup", storage=url, direction="maximize")
    for i in range(20):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("params", 1000 * i)
        trial.storage.set_trial_system_attr(trial._trial_id, "hps:config", {"model": {"name": "resnet18"}})
        study.tell(trial, i / 20)


REPO = Path(__file__).resolve().parents[1]
# Runs hps as `python -m hps ARGS`, with a global optimizer step hook that writes the wall time of
# the first step (time.time(), comparable with the launcher's) to OUT.
HOOK = """
import sys, time, runpy
out = sys.argv.pop(1)
from torch.optim.optimizer import register_optimizer_step_post_hook
def first(*_):
    handle.remove()
    open(out, "w").write(repr(time.time()))
handle = register_optimizer_step_post_hook(first)
sys.argv[0] = "hps"
runpy.run_module("hps", run_name="__main__", alter_sys=True)
"""
BASE: dict[str, Any] = {"model": {"name": "resnet18", "width": 0.25}, "data": {"subset": 250, "val_fraction": 0.2},
                        "optimizer": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 1, "batch_size": 200, "device": "cpu"}}
SPACES: dict[str, dict[str, Any]] = {
    "first step": {"study": {"name": "first", "trials": 1, "pruner": {"name": "none"}}, "base": BASE,
                   "space": {"optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}},
                   "budget": {"max_params": 1_000_000, "max_epochs": 1}},
    "per over-budget trial, 8 networks": {
        "study": {"name": "over", "trials": 8, "pruner": {"name": "none"}}, "base": BASE,
        "space": {"model.width": {"low": 0.125, "high": 1.0}, "optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}},
        "budget": {"max_params": 1_000_000, "max_epochs": 1},
        "warm_start": [{"model.width": 1.0 - i / 100, "optimizer.lr": 0.05} for i in range(8)]},
    "per over-budget trial, 1 network 8 times": {
        "study": {"name": "same", "trials": 8, "pruner": {"name": "none"}}, "base": BASE,
        "space": {"model.width": {"low": 0.125, "high": 1.0}, "optimizer.lr": {"low": 0.01, "high": 0.1, "log": True}},
        "budget": {"max_params": 1_000_000, "max_epochs": 1},
        "warm_start": [{"model.width": 1.0, "optimizer.lr": 0.01 * (i + 1)} for i in range(8)]},
}


def _run_once(case: str, space: Path, tmp: Path, src: Path) -> float:
    db, mark = tmp / f"{space.stem}.db", tmp / "first-step"
    db.unlink(missing_ok=True)
    mark.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "HPS_ARTIFACTS": str(tmp / "art"), "HPS_KEEP_WEIGHTS": "0"}
    t0 = time.time()
    subprocess.run([sys.executable, "-c", HOOK, str(mark), "run", str(space), "--storage", f"sqlite:///{db}", "--no-live"],
                   check=True, capture_output=True, env=env, cwd=tmp)
    if case == "first step":
        return float(mark.read_text()) - t0
    trials = optuna.load_study(study_name=space.stem, storage=f"sqlite:///{db}").trials
    assert all(t.state.name == "PRUNED" for t in trials) and len(trials) == 8, [t.state for t in trials]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() / len(trials)


def run_startup(rounds: int, compare: Path | None) -> None:
    if not os.environ.get("HPS_DATA"):
        sys.exit("set HPS_DATA to the CIFAR-10 .npz the spaces train on")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trees = {"this tree": REPO / "src", **({f"{compare}": compare / "src"} if compare else {})}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        paths = {}
        for case, data in SPACES.items():
            paths[case] = tmp / f"{data['study']['name']}.yaml"
            paths[case].write_text(yaml.safe_dump(data, sort_keys=False))
        seconds: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in SPACES}
        for r in range(rounds + 1):  # the first round warms the disk cache and is dropped
            for case, path in paths.items():
                for tree, src in (trees.items() if r % 2 else reversed(trees.items())):  # who goes first alternates
                    seconds[tree, case].append(_run_once(case, path, tmp, src))
    rows = {f"{tree} | {case}": round(statistics.median(s[1:]), 2) for (tree, case), s in seconds.items()}
    for name, value in rows.items():
        print(f"{name:70s} {value:6.2f} s")
    print(json.dumps({"rounds": rounds, "seconds": {f"{t} | {c}": [round(x, 3) for x in s] for (t, c), s in seconds.items()},
                      "median_s": rows}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--run", action="store_true", help="time hps run: to the first step, and per over-budget trial")
    p.add_argument("--compare", type=Path, help="with --run: another checkout, interleaved with this one")
    args = p.parse_args()
    if args.run:
        run_startup(args.rounds, args.compare)
        return
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/s.db"
        _study(url)
        commands = {
            "python -c 'import optuna'": [sys.executable, "-c", "import optuna"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "optuna studies (Optuna's CLI)": [str(bin_dir / "optuna"), "studies", "--storage", url],
            "hps --version": [str(bin_dir / "hps"), "--version"],
            "hps status": [str(bin_dir / "hps"), "status", "--storage", url],
            "hps status STUDY": [str(bin_dir / "hps"), "status", "startup", "--storage", url],
            "hps export (no weights)": [str(bin_dir / "hps"), "export", "startup", "-o", f"{tmp}/best.yaml",
                                        "--storage", url, "--artifacts", f"{tmp}/art"],
        }
        seconds: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.rounds + 1):  # the first round warms the disk cache and is dropped
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - t0)
    floor = statistics.median(seconds["python -c 'import optuna'"][1:])
    rows = {name: {"median_s": round(statistics.median(s[1:]), 3), "x_import_optuna": round(statistics.median(s[1:]) / floor, 2)}
            for name, s in seconds.items()}
    for name, r in rows.items():
        print(f"{name:28s} {r['median_s']:6.3f} s  {r['x_import_optuna']:5.2f}x import optuna")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
