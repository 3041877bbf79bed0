"""The replay harness (bench/replay.py) on the recorded table of real learning curves: equal
simulated compute for every method, over-budget configs never trained, each library's searcher
and scheduler acting as it does for real, and hand-overs scored by what the search could not see."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import replay

TABLE = REPO / "bench" / "curves" / "cpu-mini.jsonl"


@pytest.fixture(scope="module")
def table() -> replay.Table:
    return replay.Table(TABLE)


class Spy:
    """Wraps a method's searcher and records what the replay tells it (holding each trial, so no
    id is reused)."""

    def __init__(self, inner: replay.Search, table: replay.Table) -> None:
        self.inner, self.table = inner, table
        self.trials: dict[int, dict[str, Any]] = {}

    def ask(self) -> tuple[Any, dict[str, Any]]:
        tid, params = self.inner.ask()
        self.trials[id(tid)] = {"tid": tid, "config": self.table.nearest(params), "epochs": [], "end": None}
        return tid, params

    def report(self, tid: Any, epoch: int, value: float) -> bool:
        self.trials[id(tid)]["epochs"].append((epoch, value))
        return self.inner.report(tid, epoch, value)

    def finish(self, tid: Any, value: float) -> None:
        self.trials[id(tid)]["end"] = ("finished", value)
        self.inner.finish(tid, value)

    def refuse(self, tid: Any, excess: dict[str, float]) -> None:
        self.trials[id(tid)]["end"] = ("refused", excess)
        self.inner.refuse(tid, excess)

    def stop(self, tid: Any) -> None:
        self.trials[id(tid)]["end"] = ("stopped", None)
        self.inner.stop(tid)

    def best(self) -> Any | None:
        return self.inner.best()


def test_the_table_holds_feasible_curves_and_infeasible_figures(table: replay.Table) -> None:
    assert len(table.feasible) >= 5 and any(not c.feasible for c in table.configs)
    for c in table.configs:
        assert table.nearest(c.params) is c  # a recorded point maps to itself
        if c.feasible:
            assert len(c.curves) >= 2 and all(len(v) == table.epochs for v in c.curves) and c.epoch_s > 0
    assert [c.quality for c in table.feasible] == sorted((c.quality for c in table.feasible), reverse=True)
    assert table.rank(table.feasible[0]) == 0 and table.rank(table.feasible[-1]) == 1


@pytest.mark.parametrize("method", ["hps", "tune", "random"])
def test_a_replay_spends_the_same_compute_and_never_trains_over_budget(table: replay.Table, method: str) -> None:
    spy = Spy(replay.METHODS[method][0](0), table)
    workers, wall = 3, 4 * table.full_s
    replay.Replay(table, spy, workers, random.Random(0)).until(wall)
    spent = 0.0
    for t in spy.trials.values():
        c = t["config"]
        if not c.feasible:
            assert t["epochs"] == [] and (t["end"] is None or (t["end"][0] == "refused" and t["end"][1]["max_params"] > 0))
            continue
        epochs = [e for e, _ in t["epochs"]]
        assert epochs == list(range(1, len(epochs) + 1))  # epoch by epoch, in order
        assert all(v in [curve[e - 1] for curve in c.curves] for e, v in t["epochs"])  # read from a recorded curve
        spent += len(epochs) * c.epoch_s
        if t["end"] and t["end"][0] == "finished":
            assert len(epochs) == table.epochs and t["end"][1] == t["epochs"][-1][1]
    assert workers * wall - workers * max(c.epoch_s for c in table.feasible) <= spent + len(spy.trials) * replay.PRESCREEN_S
    assert spent <= workers * wall
    stopped = [t for t in spy.trials.values() if t["end"] == ("stopped", None)]
    assert (method == "random") == (not stopped)  # the pruners and ASHA stop trials; random search never does


def test_tune_completes_a_trial_asha_stops_with_its_last_result(table: replay.Table) -> None:
    search = replay.TuneSearch(0, table.epochs)
    replay.Replay(table, search, 2, random.Random(0)).until(6 * table.full_s)
    study = search.searcher._ot_study
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert any(max(t.intermediate_values) < table.epochs for t in done)  # an early stop told as COMPLETE
    best = search.best()
    assert best is not None and max(v for v, _ in search.last.values()) in (
        v for tid, (v, _) in search.last.items() if search.params[tid] == best)


def test_hps_tells_tpe_the_budget_it_broke(table: replay.Table) -> None:
    search = replay.hps_search(0)
    replay.Replay(table, search, 2, random.Random(0)).until(3 * table.full_s)
    refused = [t for t in search.study.trials if not t.intermediate_values and t.state.name == "PRUNED"]
    assert refused and all(t.constraints["max_params"] > 0 for t in refused)  # TPE ranks them as infeasible


def test_hps_hands_over_its_best_complete_trial_scored_by_both_seeds(table: replay.Table) -> None:
    rows = replay.run_method(table, "hps", 1, 2)
    assert [r["level"] for r in rows] == list(replay.LEVELS)
    by_id = {c.id: c for c in table.configs}
    for r in rows:
        if r["config"] is not None:
            c = by_id[r["config"]]
            assert c.feasible and r["quality"] == c.quality and r["test"] == c.test and r["rank"] == table.rank(c)


@pytest.mark.parametrize("method", ["hps", "tune"])
def test_a_fresh_replay_trains_each_config_once_and_hands_over_what_trained(table: replay.Table, method: str) -> None:
    search = replay.METHODS[method][0](0)
    sim = replay.Replay(table, search, 2, random.Random(0), fresh=True)
    sim.until(6 * table.full_s)
    ids = [c.id for c in sim.config_of.values()]
    assert len(ids) > 20 and len(set(ids)) == len(ids)  # a model-based searcher asks near its best, again and again
    stale = replay.Replay(table, replay.METHODS[method][0](0), 2, random.Random(0))
    stale.until(6 * table.full_s)
    assert len({c.id for c in stale.config_of.values()}) < len(stale.config_of)  # without: the same configs again
    best = replay.handover(sim, 0)  # the config its best point trained, which need not be that point's nearest
    seen = max(search.last.values())[0] if method == "tune" else search.study.best_value
    assert best is not None and best.feasible and any(seen in curve for curve in best.curves)


def test_the_bench_prints_a_paired_table_and_writes_every_hand_over(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/replay.py", "--seeds", "2", "--workers", "2", "--methods", "hps",
                           "random", "hps recheck=2", "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * len(replay.LEVELS)
    assert "| 50 | random | 2 |" in proc.stdout and "| p test |" in proc.stdout
    assert (tmp_path / "regret.png").stat().st_size > 10_000
