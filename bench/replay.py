"""Searches replayed on recorded learning curves (issue 31): hps against Ray Tune, Optuna, Hyperband
and random search, at equal simulated compute, over many seeds.

    python bench/replay.py [--table bench/curves/cpu-mini.jsonl --seeds 50 --workers 4 --fresh --out out/replay]

The table (``bench/curves.py``) holds real curves: each recorded config trained to the end with two
seeds, val accuracy per epoch, its seconds per epoch and its test accuracy. A searcher asks for a
config; the replay maps the point it asked for to the nearest recorded config (distances in the
space's own scale: log for log keys, 0/1 for a choice), "trains" it by reading one seed's curve
epoch by epoch, tells the searcher each epoch, and charges the config's seconds per epoch (its
median over both recordings) on a simulated clock with ``--workers`` parallel workers. With
``--fresh`` a point maps to the nearest config that this search has not asked for yet: in a
continuous space a model-based searcher asking near its best gets a new, similar config, while the
plain nearest-config map hands it the same recorded config again and again. A config
that breaks the budget costs ``PRESCREEN_S`` and is told as stopped before any epoch, for every
method (hps does this itself; a Tune or Optuna user writes the same check).

What counts is the config a method hands over, scored by what the search could not see: its mean
final val accuracy over both recorded seeds, its mean test accuracy, and its rank among all
recorded feasible configs. Methods:

- ``hps``: the sampler and pruner exactly as ``hps run`` builds them from a space with hps's
  defaults (TPE seeded per trial, multivariate, constant liar; ASHA), the budget pre-screen, and
  export's choice (the best COMPLETE trial);
- ``tune``: Ray Tune's own ``OptunaSearch`` and ``ASHAScheduler`` (defaults), driven by the replay
  the way Tune's controller drives them (a trial ASHA stops is completed with its last result);
  Tune hands over ``get_best_result(scope="last")``: the best last result of any trial;
- ``optuna``: Optuna's defaults, TPE and the median pruner;
- ``hyperband``: random search with Optuna's Hyperband pruner;
- ``random``: random search, no pruning;
- hps variants (``VARIANTS``): other rung schedules, TPE settings, and ``recheck``: at each compute
  level the top K complete trials are trained again with the other seed (K full trainings, taken
  from the same compute) and the best mean of both runs is handed over.

Writes ``results.json`` (every hand-over), prints the table for BENCHMARKS.md and draws
``regret.png``.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import multiprocessing
import random
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).parent))
import curves

PRESCREEN_S = 1.0  # the meter's cost of refusing an over-budget config (BENCHMARKS, start-up: 1.06 s)
LEVELS = (5, 10, 20, 30, 50)  # compute levels, in full trainings' worth (a config's 12 epochs)
METRIC = "val_acc"


@dataclass
class Config:
    id: int
    params: dict[str, Any]
    feasible: bool
    curves: list[list[float]] = field(default_factory=list)  # val acc per epoch, one list per seed
    tests: list[float] = field(default_factory=list)
    epoch_s: float = 0.0
    size: int = 0  # trainable parameters (the budget's figure)

    @property
    def quality(self) -> float:
        """Mean final val accuracy over the recorded seeds: what the search could not see."""
        return statistics.mean(c[-1] for c in self.curves)

    @property
    def test(self) -> float:
        return statistics.mean(self.tests)


class Table:
    """The recorded configs: feasible ones with both seeds' curves, infeasible ones with none."""

    def __init__(self, path: Path) -> None:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by: dict[int, Config] = {}
        seconds: dict[int, list[float]] = {}
        for r in rows:
            c = by.setdefault(r["config"], Config(r["config"], r["params"], r["feasible"], size=r["budget"]["params"]))
            if r["feasible"]:
                c.curves.append(r["val_acc"])
                c.tests.append(r["test_acc"])
                seconds.setdefault(c.id, []).extend(r["epoch_seconds"])
        self.configs = [c for c in by.values() if not c.feasible or len(c.curves) >= 2]
        for c in self.configs:
            c.epoch_s = statistics.median(seconds[c.id]) if c.feasible else 0.0
        self.feasible = sorted((c for c in self.configs if c.feasible), key=lambda c: c.quality, reverse=True)
        self.epochs = len(self.feasible[0].curves[0])
        self.full_s = statistics.mean(c.epoch_s * self.epochs for c in self.feasible)
        self._rank = {c.id: i for i, c in enumerate(self.feasible)}
        self._dims = _dims()
        self._points = [(c, self._vector(c.params)) for c in self.configs]

    def _vector(self, params: dict[str, Any]) -> list[float]:
        return [f(params[k]) for k, f in self._dims]

    def nearest(self, params: dict[str, Any], skip: set[int] | frozenset[int] = frozenset()) -> Config:
        """The recorded config closest to ``params``, passing over the ids in ``skip``."""
        v = self._vector(params)
        points = [p for p in self._points if p[0].id not in skip] or self._points
        return min(points, key=lambda p: sum((a - b) ** 2 for a, b in zip(v, p[1], strict=True)))[0]

    def rank(self, c: Config) -> float:
        """0 for the best recorded config by mean val over seeds, 1 for the worst."""
        return self._rank[c.id] / max(1, len(self.feasible) - 1)


def _dims() -> list[tuple[str, Callable[[Any], float]]]:
    """One scaled coordinate per searched key of the table's space: [0, 1], log where the key is."""
    out: list[tuple[str, Callable[[Any], float]]] = []
    for key, d in curves.SPACE["space"].items():
        if "choices" in d:
            out += [(key, functools.partial(_is, c)) for c in d["choices"]]
        else:
            out.append((key, functools.partial(_scaled, d["low"], d["high"], bool(d.get("log")))))
    return out


def _is(choice: Any, v: Any) -> float:
    return float(v == choice)


def _scaled(low: float, high: float, log: bool, v: float) -> float:
    f = math.log if log else float
    return (f(v) - f(low)) / (f(high) - f(low))


class Search(Protocol):
    """One method's searcher for one seed, as the replay drives it."""

    def ask(self) -> tuple[Any, dict[str, Any]]: ...
    def report(self, tid: Any, epoch: int, value: float) -> bool: ...  # False: stop the trial here
    def finish(self, tid: Any, value: float) -> None: ...
    def refuse(self, tid: Any, excess: dict[str, float]) -> None: ...  # over budget: never trained
    def stop(self, tid: Any) -> None: ...  # stopped after `report` said so
    def best(self) -> Any | None: ...  # the trial it hands over


class OptunaSearch:
    """An Optuna sampler and pruner on an in-memory study, asked and told trial by trial."""

    def __init__(self, sampler: Any, pruner: Any, constraints: bool = False) -> None:
        import optuna

        from hps.search.space import _suggest_params

        self.optuna, self.suggest, self.constraints = optuna, _suggest_params, constraints
        self.space = _space()
        self.study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

    def ask(self) -> tuple[Any, dict[str, Any]]:
        trial = self.study.ask()
        return trial, self.suggest(self.space, trial)

    def report(self, tid: Any, epoch: int, value: float) -> bool:
        tid.report(value, epoch)
        return not tid.should_prune()

    def finish(self, tid: Any, value: float) -> None:
        self.study.tell(tid, value)

    def refuse(self, tid: Any, excess: dict[str, float]) -> None:
        if self.constraints:  # hps's pre-screen records each limit as a constraint: TPE reads them
            for key, v in excess.items():
                tid.set_constraint(key, v)
        self.study.tell(tid, state=self.optuna.trial.TrialState.PRUNED)

    def stop(self, tid: Any) -> None:
        self.study.tell(tid, state=self.optuna.trial.TrialState.PRUNED)

    def best(self) -> Any | None:
        done = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.COMPLETE,))
        return max(done, key=lambda t: t.values[0]).params if done else None

    def ranked(self) -> list[dict[str, Any]]:
        done = self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.COMPLETE,))
        return [t.params for t in sorted(done, key=lambda t: t.values[0], reverse=True)]


class TuneSearch:
    """Ray Tune's own OptunaSearch and ASHAScheduler, called as Tune's controller calls them."""

    def __init__(self, seed: int, epochs: int) -> None:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch as TuneOptuna

        space: dict[str, Any] = {}
        for key, d in curves.SPACE["space"].items():
            space[key] = (tune.choice(d["choices"]) if "choices" in d else
                          tune.loguniform(d["low"], d["high"]) if d.get("log") else tune.uniform(d["low"], d["high"]))
        self.searcher = TuneOptuna(space=TuneOptuna.convert_search_space(space), metric=METRIC, mode="max", seed=seed)
        self.scheduler = ASHAScheduler(metric=METRIC, mode="max", max_t=epochs)
        self.last: dict[str, tuple[float, dict[str, Any]]] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.n = 0

    def ask(self) -> tuple[Any, dict[str, Any]]:
        self.n += 1
        trial = SimpleNamespace(trial_id=f"t{self.n:05d}")
        self.params[trial.trial_id] = self.searcher.suggest(trial.trial_id) or {}
        self.scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]
        return trial, self.params[trial.trial_id]

    def report(self, tid: Any, epoch: int, value: float) -> bool:
        result = {METRIC: value, "training_iteration": epoch}
        self.last[tid.trial_id] = (value, result)
        action = self.scheduler.on_trial_result(None, tid, result)  # type: ignore[arg-type]
        self.searcher.on_trial_result(tid.trial_id, result)
        return action == "CONTINUE"

    def finish(self, tid: Any, value: float) -> None:
        self.stop(tid)

    def refuse(self, tid: Any, excess: dict[str, float]) -> None:  # a trainable that returns without a result
        self.scheduler.on_trial_remove(None, tid)  # type: ignore[arg-type]
        self.searcher.on_trial_complete(tid.trial_id, None)

    def stop(self, tid: Any) -> None:  # Tune completes a stopped trial with its last result
        result = self.last[tid.trial_id][1]
        self.scheduler.on_trial_complete(None, tid, result)  # type: ignore[arg-type]
        self.searcher.on_trial_complete(tid.trial_id, result)

    def best(self) -> Any | None:
        if not self.last:
            return None
        return self.params[max(self.last, key=lambda t: self.last[t][0])]


@functools.cache
def _space() -> Any:
    import hps

    return hps.load_space(curves.SPACE, overrides={"study.trials": 100_000})


def hps_search(seed: int, sampler: dict[str, Any] | None = None, pruner: dict[str, Any] | None = None) -> OptunaSearch:
    """The sampler and pruner as ``hps run`` builds them (hps's defaults, or a variant's arguments)."""
    from hps.search.algorithms import TrialSeeded, build_pruner

    space = _space()
    study = space.spec.study
    s = TrialSeeded("tpe", sampler or {}, study.trials, seed)
    return OptunaSearch(s, build_pruner("asha", pruner or {}, space.base.train.epochs), constraints=True)


def _optuna(seed: int, kind: str) -> OptunaSearch:
    import optuna

    if kind == "optuna":
        return OptunaSearch(optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner())
    if kind == "hyperband":
        return OptunaSearch(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.HyperbandPruner(max_resource=12))
    return OptunaSearch(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner())


# name -> (build a searcher for a seed, top trials rechecked with the other seed before hand-over)
METHODS: dict[str, tuple[Callable[[int], Search], int]] = {
    "hps": (lambda s: hps_search(s), 0),
    "tune": (lambda s: TuneSearch(s, 12), 0),
    "optuna": (lambda s: _optuna(s, "optuna"), 0),
    "hyperband": (lambda s: _optuna(s, "hyperband"), 0),
    "random": (lambda s: _optuna(s, "random"), 0),
}
# hps with other rung schedules, TPE settings and rechecks: name -> (sampler args, pruner args, recheck)
_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "hps old asha": ({}, {"min_resource": 1, "reduction_factor": 3}, 0),  # hps's default before issue 31
    "hps min_resource=3": ({}, {"min_resource": 3}, 0),  # the first rung at a quarter of the epochs
    "hps rf=2": ({}, {"reduction_factor": 2}, 0),
    "hps min_resource=3 rf=2": ({}, {"min_resource": 3, "reduction_factor": 2}, 0),
    "hps startup=20": ({"n_startup_trials": 20}, {}, 0),
    "hps no liar": ({"constant_liar": False}, {}, 0),
    "hps recheck=2": ({}, {}, 2),
    "hps min_resource=3 recheck=3": ({}, {"min_resource": 3}, 3),
    "hps min_resource=3 rf=2 recheck=2": ({}, {"min_resource": 3, "reduction_factor": 2}, 2),
}
VARIANTS: dict[str, tuple[Callable[[int], Search], int]] = {
    name: (functools.partial(hps_search, sampler=a, pruner=b), k) for name, (a, b, k) in _VARIANTS.items()}


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    worker: int = field(compare=False)
    tid: Any = field(compare=False)
    config: Config | None = field(compare=False)
    seed: int = field(compare=False)
    epoch: int = field(compare=False)
    refused: Config | None = field(compare=False, default=None)


class Replay:
    """``search`` on ``workers`` simulated workers: :meth:`until` plays every event up to a time.
    With ``fresh``, a point maps to the nearest config this search has not asked for yet (the
    table's stand-in for "a new config near there" in a continuous space); without, to the nearest
    config, so a searcher that keeps asking near one point trains that config again and again."""

    def __init__(self, table: Table, search: Search, workers: int, rng: random.Random, fresh: bool = False) -> None:
        self.table, self.search, self.rng, self.fresh = table, search, rng, fresh
        self.heap: list[_Event] = []
        self.seq = 0
        self.config_of: dict[str, Config] = {}  # the config each asked-for point trained
        for w in range(workers):
            self._start(w, 0.0)

    def _start(self, worker: int, now: float) -> None:
        tid, params = self.search.ask()
        c = self.table.nearest(params, {c.id for c in self.config_of.values()} if self.fresh else frozenset())
        self.config_of[_key(params)] = c
        self.seq += 1
        if not c.feasible:  # the pre-screen: told at once, never trained
            heapq.heappush(self.heap, _Event(now + PRESCREEN_S, self.seq, worker, tid, None, 0, 0, c))
        else:
            seed = self.rng.randrange(len(c.curves))
            heapq.heappush(self.heap, _Event(now + c.epoch_s, self.seq, worker, tid, c, seed, 1))

    def until(self, t: float) -> None:
        while self.heap and self.heap[0].time <= t:
            e = heapq.heappop(self.heap)
            if e.refused is not None:
                self.search.refuse(e.tid, {"max_params": e.refused.size - curves.SPACE["budget"]["max_params"]})
            else:
                assert e.config is not None
                value = e.config.curves[e.seed][e.epoch - 1]
                go_on = self.search.report(e.tid, e.epoch, value)
                if e.epoch == self.table.epochs:
                    self.search.finish(e.tid, value)
                elif not go_on:
                    self.search.stop(e.tid)
                else:
                    self.seq += 1
                    heapq.heappush(self.heap, _Event(e.time + e.config.epoch_s, self.seq, e.worker, e.tid, e.config,
                                                     e.seed, e.epoch + 1))
                    continue
            self._start(e.worker, e.time)


    def trained(self, params: dict[str, Any]) -> Config:
        """The config that the point ``params`` trained."""
        return self.config_of[_key(params)]


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def handover(sim: Replay, recheck: int) -> Config | None:
    """The config the method hands over; with ``recheck``, the best mean of two runs among its top few."""
    search = sim.search
    if not recheck:
        best = search.best()
        return sim.trained(best) if best is not None else None
    assert isinstance(search, OptunaSearch)
    top: list[Config] = []
    for params in search.ranked():
        c = sim.trained(params)
        if c not in top:
            top.append(c)
        if len(top) == recheck:
            break
    return max(top, key=lambda c: c.quality, default=None)  # both recorded seeds: the first run and the recheck


def run_method(table: Table, name: str, seed: int, workers: int, fresh: bool = False) -> list[dict[str, Any]]:
    """Every compute level's hand-over of one method and seed. Each level is the run a user with
    that budget would have had: the search does not know its budget, except that with rechecks it
    stops K full trainings early (as ``hps run`` keeps them back from ``max_device_hours``), or
    runs on to the end without rechecks when nothing has completed by then."""
    build, recheck = {**METHODS, **VARIANTS}[name]
    rng = random.Random(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = build(seed)
        out = []
        sim = Replay(table, search, workers, rng, fresh)
        for lv in LEVELS:
            sim.until((lv - recheck) * table.full_s / workers)
            k = recheck if search.best() is not None else 0
            if not k:
                sim.until(lv * table.full_s / workers)
            c = handover(sim, k)
            out.append({"method": name, "seed": seed, "level": lv, "config": c.id if c else None,
                        "distinct": len({c.id for c in sim.config_of.values() if c.feasible}),
                        "quality": c.quality if c else None, "test": c.test if c else None,
                        "rank": table.rank(c) if c else 1.0, "rechecked": k})
    return out


def report(table: Table, rows: list[dict[str, Any]], against: str = "hps") -> str:
    """One line per compute level and method: the hand-over's mean val over seeds, test, regret,
    how often it is in the table's top 5%, and a paired one-sided Wilcoxon test of ``against``
    over it, on val (p val) and on test (p test), seed by seed."""
    from scipy.stats import wilcoxon

    top = table.feasible[0].quality
    lines = [f"{len(table.feasible)} feasible configs, {table.epochs} epochs, a full training {table.full_s:.0f} s; "
             f"best mean val {top:.4f}",
             "| level | method | seeds | configs tried | val (mean of 2) | test | regret | top 5% | p val | p test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["method"], r["level"], r["seed"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for lv in sorted({r["level"] for r in rows}):
        for m in methods:
            rs = [r for r in rows if r["method"] == m and r["level"] == lv]
            q = [r["quality"] or 0.0 for r in rs]
            t = [r["test"] or 0.0 for r in rs]
            ps = ["", ""]
            if m != against:
                pairs = [(by[(against, lv, r["seed"])], r) for r in rs if (against, lv, r["seed"]) in by]
                for j, key in enumerate(("quality", "test")):
                    d = [(a[key] or 0.0) - (b[key] or 0.0) for a, b in pairs]
                    ps[j] = f"{wilcoxon(d, alternative='greater').pvalue:.3g}" if any(d) else "="
            tried = statistics.mean(r.get("distinct", 0) for r in rs)
            lines.append(f"| {lv} | {m} | {len(rs)} | {tried:.0f} | {statistics.mean(q):.4f} | {statistics.mean(t):.4f} | "
                         f"{top - statistics.mean(q):.4f} | {sum(r['rank'] <= 0.05 for r in rs) / len(rs):.0%} | "
                         f"{ps[0]} | {ps[1]} |")
    return "\n".join(lines)


def plot(table: Table, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = table.feasible[0].quality
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        levels = sorted({r["level"] for r in rows if r["method"] == m})
        regret = [top - statistics.mean(r["quality"] or 0.0 for r in rows if r["method"] == m and r["level"] == lv)
                  for lv in levels]
        ax.plot(levels, regret, marker="o", label=m)
    ax.set_xlabel("compute (full trainings' worth)")
    ax.set_ylabel("regret: best mean val - hand-over's mean val")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


_TABLE: list[Table] = []  # a pool process's table


def _init(path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _TABLE.append(Table(path))


def _one(task: tuple[str, int, int, bool]) -> list[dict[str, Any]]:
    return run_method(_TABLE[0], *task)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=Path, default=Path(__file__).parent / "curves" / "cpu-mini.jsonl")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=[*METHODS, *VARIANTS])
    p.add_argument("--jobs", type=int, default=1, help="processes replaying at once")
    p.add_argument("--fresh", action="store_true", help="map each point to the nearest config not asked for yet")
    p.add_argument("--out", type=Path, default=Path("out/replay"))
    args = p.parse_args()
    table = Table(args.table)
    tasks = [(m, seed, args.workers, args.fresh) for seed in range(args.seeds) for m in args.methods]
    rows: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(args.jobs, _init, (args.table,)) as pool:
        for i, done in enumerate(pool.imap(_one, tasks)):
            rows += done
            if (i + 1) % len(args.methods) == 0:
                print(f"seed {(i + 1) // len(args.methods) - 1} done", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"workers": args.workers, "fresh": args.fresh,
                                                       "table": str(args.table),
                                                       "configs": len(table.feasible), "rows": rows}))
    plot(table, rows, args.out / "regret.png")
    print(report(table, rows))


if __name__ == "__main__":
    main()
