"""The reports' question as one command: under a report's budget, how good a model does hps find,
in how much device time, against what the report got by hand?

    python bench/reports.py --report 001 --report airnet --data DIR_OR_NPZ --search-seconds 1800 \\
        [--epochs 20] [--retrain-epochs 60] [--ray local --gpus-per-trial 0.25] [--set KEY=VALUE ...]

For each report: a study on the report's space for a fixed device-time budget
(``budget.max_device_hours``) on the whole training split, the best feasible trial exported and
retrained for ``--retrain-epochs`` (default: the space's epochs) with the test split scored once,
then one table: best val during the search, test accuracy after the retrain, device-seconds and
images processed for search and retrain, beside the report's accuracy and compute (its epochs x
50,000 images). ``airnet`` is airbench's network under report 001's budget (< 5M params).

It runs at any scale: the test suite rehearses it on the CPU at tiny settings
(``tests/bench/test_reports.py``) so that a GPU run has no surprises. Writes ``reports.json`` and
``reports.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hps
from hps.search.space import Space
from hps.trainers import load_data, retrain

REPO = Path(__file__).resolve().parents[1]
CIFAR_TRAIN = 50_000


@dataclass(frozen=True)
class Report:
    title: str
    space: Path | dict[str, Any]  # a shipped space file, or a space as a dict
    accuracy: float  # the report's test accuracy
    epochs: int  # the report's training epochs (its compute: epochs x 50,000 images)


AIRNET: dict[str, Any] = {
    "study": {"name": "reports_airnet", "trials": 64, "sampler": {"name": "tpe"},
              "pruner": {"name": "asha", "args": {"min_resource": 2, "reduction_factor": 3}}},
    "base": {"model": {"name": "airnet", "width": 1.0}, "data": {"dataset": "cifar10", "val_fraction": 0.1},
             "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
             "augment": {"policy": "basic", "strength": 0.25},
             "train": {"epochs": 16, "batch_size": 1024, "label_smoothing": 0.2}},
    "space": {"model.width": {"type": "fit", "low": 0.5, "high": 4.0},
              "optimizer.lr": {"low": 0.02, "high": 0.8, "log": True},
              "optimizer.weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
              "schedule.name": {"choices": ["onecycle", "cosine"]},
              "augment.strength": {"low": 0.0, "high": 1.0},
              "train.label_smoothing": {"low": 0.0, "high": 0.3}},
    "budget": {"max_params": 5_000_000, "max_epochs": 100},
}
REPORTS = {
    "001": Report("ResNet-18 family, < 5M params (report 001)", REPO / "spaces/cifar10_resnet18_under_5m_params.yaml",
                  0.956, 1200),
    "000": Report("EfficientNet-B0, < 20 MB fp16 (report 000)", REPO / "spaces/cifar10_efficientnet_b0_20mb_fp16.yaml",
                  0.912, 500),
    "airnet": Report("airnet, < 5M params (report 001's budget)", AIRNET, 0.956, 1200),
}


def load(report: Report, args: argparse.Namespace, name: str) -> Space:
    """The report's space with the run's settings on top: its own study name, a device-time budget
    that stops the search, the data, the epochs, and the user's ``--set``."""
    over: dict[str, Any] = {"study.name": name, "study.trials": args.trials,
                            "budget.max_device_hours": args.search_seconds / 3600}
    if args.data:
        over["fixed.data.path"] = str(Path(args.data).resolve())
    if args.epochs:
        over |= {"fixed.train.epochs": args.epochs, "budget.max_epochs": args.epochs}
    items = [f"{k}={v}" for k, v in over.items()] + list(args.set or [])  # the user's --set last: it wins
    return hps.load_space(report.space if isinstance(report.space, Path) else dict(report.space), overrides=items)


def search(space: Space, args: argparse.Namespace, n_train: int) -> dict[str, Any]:
    result = hps.run(space, args.storage, ray=args.ray, workers=args.workers, gpus_per_trial=args.gpus_per_trial,
                     progress=args.progress)
    trials = result.study.get_trials(deepcopy=False)
    epochs = sum(len(t.intermediate_values) for t in trials)
    best = result.best_trial
    return {"result": result, "trials": len(trials), "counts": result.counts,
            "best_val": best.values[0] if best else None, "best_trial": best.number if best else None,
            "device_s": sum(float(t.user_attrs.get("device_seconds", 0.0)) for t in trials),
            "images": epochs * n_train, "stopped": result.stopped}


def one(key: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    report = REPORTS[key]
    name = f"reports_{key}_{time.strftime('%Y%m%d_%H%M%S')}"
    space = load(report, args, name)
    n_train = len(load_data(space.base.data).train)
    s = search(space, args, n_train)
    row: dict[str, Any] = {"report": key, "title": report.title, "study": name, "train_images": n_train,
                           **{k: v for k, v in s.items() if k != "result"}, "report_acc": report.accuracy,
                           "report_images": report.epochs * CIFAR_TRAIN}
    if s["best_trial"] is None:
        return row | {"test_acc": None, "retrain_device_s": 0.0, "retrain_images": 0}
    best = out / f"best-{key}.yaml"
    hps.export(s["result"], best)
    epochs = args.retrain_epochs or space.base.train.epochs
    trained = retrain(best, out / f"retrain-{key}", test=True, overrides={"train.epochs": epochs})
    return row | {"test_acc": trained.test_acc, "retrain_epochs": epochs, "retrain_device_s": trained.seconds,
                  "retrain_images": epochs * n_train}


def table(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = ["| setup | best val (search) | test acc (retrain) | report's test acc | search device-s | "
             "search images | retrain device-s | retrain images | images vs report's |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        images = r["images"] + r["retrain_images"]
        lines.append(f"| {r['title']} | {pct(r['best_val'])} | {pct(r['test_acc'])} | {pct(r['report_acc'])} | "
                     f"{r['device_s']:.0f} | {r['images']:,} | {r['retrain_device_s']:.0f} | {r['retrain_images']:,} | "
                     f"{images / r['report_images']:.3g}x of {r['report_images']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="append", choices=sorted(REPORTS), help="repeatable; default 001 and airnet")
    p.add_argument("--data", help="the whole CIFAR-10: a folder (train/<class>/..., test/<class>/...) or an .npz; "
                                  "default: the space's own (HPS_DATA)")
    p.add_argument("--search-seconds", type=float, required=True, help="device-seconds of training for the search")
    p.add_argument("--epochs", type=int, help="epochs per search trial (default: the space's)")
    p.add_argument("--retrain-epochs", type=int, help="epochs of the retrain (default: the space's)")
    p.add_argument("--trials", type=int, default=10_000, help="a ceiling; the device-time budget stops the search")
    p.add_argument("--storage", help="default $HPS_STORAGE, else sqlite:///hps.db")
    p.add_argument("--ray", help="local, auto or an address: trials on Ray workers")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--progress", default="lines", choices=["lines", "none", "live", "auto"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a dotted key of the space, as hps run --set")
    p.add_argument("--out", default="out/reports")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [one(key, args, out) for key in args.report or ["001", "airnet"]]
    (out / "reports.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "reports.md").write_text(table(rows) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    try:
        main()
    except (hps.SpaceError, hps.SettingsError, hps.ConfigError, hps.DataError, hps.StudyError) as e:
        raise SystemExit(f"bench/reports.py: {e}") from None  # the one line hps would print, exit 1
