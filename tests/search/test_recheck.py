"""``study.recheck``: the best few search trials trained again with another seed, and the export
chosen by the mean over both runs, on a real study with the real trainer and CLI."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hps as hps_api
from hps.search.record import CONFIG, RECHECK_OF, best_feasible, runs_of, trial_info
from hps.search.run import run
from hps.search.space import SpaceError, load_space
from tests.search.conftest import hps, trials, write_space


def test_rechecks_run_to_the_end_with_another_seed_and_decide_the_export(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'hps.db'}"
    sound = [{"model.width": 0.25, "optimizer.lr": 0.05}, {"model.width": 0.125, "optimizer.lr": 0.05}]
    pruner = {"name": "median", "args": {"n_startup_trials": 3}}  # trials 0-2 complete; trial 3 and rechecks may not
    path = write_space(tmp_path, study_name, study__recheck=2, study__pruner=pruner, warm_start=sound)
    result = run(load_space(path), url, trials=4, progress="none")
    ts = trials(url, study_name)
    search, rechecks = ([t for t in ts if (RECHECK_OF in t.system_attrs) == r] for r in (False, True))
    assert len(search) == 4 and len(rechecks) == 2
    assert result.finished == 4 and result.rechecks == 2 and "4/4 finished + 2 rechecks" in str(result)
    done = sorted((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: -t.values[0])
    assert sorted(t.system_attrs[RECHECK_OF] for t in rechecks) == sorted(t.number for t in done[:2])
    for r in rechecks:
        origin = ts[r.system_attrs[RECHECK_OF]]
        assert r.state == TrialState.COMPLETE and r.params == origin.params
        assert len(r.intermediate_values) == 3  # never pruned: a recheck runs every epoch
        assert trial_info(r, CONFIG)["train"]["seed"] == trial_info(origin, CONFIG)["train"]["seed"] + 1
        assert r.user_attrs["recheck_of"] == origin.number  # a dashboard column
    study = optuna.load_study(study_name=study_name, storage=url)
    runs = runs_of(study)
    best = best_feasible(study)
    assert best is not None and RECHECK_OF not in best.system_attrs
    assert statistics.mean(runs[best.number]) == max(statistics.mean(v) for v in runs.values())

    out = tmp_path / "best.yaml"
    exported = hps_api.export(study_name, out, storage=url)
    assert str(exported).endswith(f"trial {best.number}, mean {statistics.mean(runs[best.number]):.4f} of 2 runs "
                              f"({runs[best.number][0]:.4f}, {runs[best.number][1]:.4f})")
    prov = yaml.safe_load(out.read_text())["provenance"]
    assert prov["trial"] == best.number and prov["recheck"]["values"] == runs[best.number]
    assert prov["recheck"]["search_best"]["trial"] == done[0].number
    assert yaml.safe_load(out.read_text())["train"]["seed"] == trial_info(best, CONFIG)["train"]["seed"]

    frame = result.dataframe()
    assert sorted(frame["recheck_of"].dropna().astype(int)) == sorted(t.number for t in done[:2])
    status = hps("status", study_name, "--storage", url)
    assert f"rechecked: export picks trial {best.number}, mean" in status.stdout
    assert "recheck of trial" in status.stdout
    again = run(load_space(path), url, trials=4, progress="none")  # nothing owed: nothing trains again
    assert len(trials(url, study_name)) == 6 and again.rechecks == 2


def test_recheck_is_refused_where_it_cannot_choose(tmp_path: Path, study_name: str) -> None:
    two = write_space(tmp_path, study_name, study__recheck=1, objectives=["val_acc", "params"],
                      study__pruner={"name": "none"})
    with pytest.raises(SpaceError, match=r"study\.recheck: 1 compares one objective's runs"):
        load_space(two)
    with pytest.raises(SpaceError, match="recheck"):
        load_space(write_space(tmp_path, study_name, study__recheck=-1))


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_a_compute_budget_keeps_back_the_rechecks_share(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'hps.db'}"
    limit = 12.0  # device-seconds: a handful of ~1 s trials
    path = write_space(tmp_path, study_name, study__recheck=2, study__pruner={"name": "none"}, warm_start=[],
                       budget={"max_params": 300_000, "max_epochs": 3, "max_device_hours": limit / 3600})
    result = run(load_space(path), url, trials=1000, progress="none")
    ts = trials(url, study_name)
    rechecks = [t for t in ts if RECHECK_OF in t.system_attrs]
    assert rechecks and all(r.state == TrialState.COMPLETE for r in rechecks)
    search = [float(t.user_attrs.get("device_seconds", 0)) for t in ts if RECHECK_OF not in t.system_attrs]
    assert sum(search) < limit  # the search stopped early: two trainings' worth were kept for the rechecks
    best = sorted((t for t in ts if t.state == TrialState.COMPLETE and RECHECK_OF not in t.system_attrs),
                  key=lambda t: -t.values[0])[:2]
    cost = sum(float(t.user_attrs["device_seconds"]) for t in best)
    assert len(rechecks) == 2 or cost > limit - sum(search)  # both, unless the budget left cannot pay for both
    assert result.stopped and result.stopped[0].startswith("compute budget spent")
    assert result.best_trial is not None and result.best_trial.number in {r.system_attrs[RECHECK_OF] for r in rechecks}
    assert not [t for t in ts if t.state == TrialState.WAITING]  # no recheck queued that the budget cannot pay
    first = min(r.number for r in rechecks)
    assert all(RECHECK_OF in t.system_attrs for t in ts[first:])  # the search does not go on after the rechecks


def test_no_recheck_is_queued_that_the_budget_cannot_pay(tmp_path: Path, study_name: str) -> None:
    from hps.search.budget import StudyBudget

    url = f"sqlite:///{tmp_path / 'hps.db'}"
    sound = [{"model.width": 0.25, "optimizer.lr": 0.05}, {"model.width": 0.125, "optimizer.lr": 0.05}]
    path = write_space(tmp_path, study_name, study__pruner={"name": "none"}, warm_start=sound)
    run(load_space(path), url, trials=2, progress="none")
    study = optuna.load_study(study_name=study_name, storage=url)
    spent = sum(float(t.user_attrs.get("device_seconds", 0)) for t in study.trials)
    typical = statistics.median(float(t.user_attrs["device_seconds"]) for t in study.trials
                                if t.state == TrialState.COMPLETE)
    assert StudyBudget(None).affordable(study, 3) == 3
    assert StudyBudget((spent + 1.5 * typical) / 3600).affordable(study, 3) == 1
    assert StudyBudget(spent / 3600).affordable(study, 3) == 0
