"""Real studies on SQLite and PostgreSQL with real CIFAR images and the real trainer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import hps as hps_api
import hps.search.objective as objective_module
from hps.search.export import export, plot
from hps.search.record import CONFIG, DATA, STOPPED, reason, study_attrs
from hps.search.run import run
from hps.search.space import load_space
from hps.search.storage import get_storage
from hps.search.study import open_study
from hps.trainers import TrainConfig, load_config, train
from tests.conftest import REPO
from tests.helpers import free_port, wait_until
from tests.search.conftest import PG_URL, SMALL, hps, trials, write_space


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Records every config that reaches the real trainer."""
    seen: list[TrainConfig] = []

    def recording_train(cfg: TrainConfig, *args: Any, **kwargs: Any) -> Any:
        seen.append(cfg)
        return train(cfg, *args, **kwargs)

    monkeypatch.setattr(objective_module, "train", recording_train)
    return seen


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_a_short_real_study(tmp_path: Path, storage_url: str, study_name: str, spy: list[TrainConfig]) -> None:
    space = load_space(write_space(tmp_path, study_name))
    run(space, storage_url, trials=5, progress="none")
    ts = trials(storage_url, study_name)
    finished = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5 and len(ts) == 5

    over = ts[0]  # warm start at width 1.0: 1.97M params > 300k
    assert over.state == TrialState.PRUNED and over.intermediate_values == {}
    assert reason(over) == "over budget: params 1.97M > max_params 300k"
    assert over.user_attrs["prune_reason"] == "over:max_params"  # the dashboard column: one token
    assert over.constraints["max_params"] == 1_972_792 - 300_000 and over.constraints["max_epochs"] == 0
    assert "device_seconds" not in over.user_attrs
    # pre-screened configs never reached the trainer; every trained config met the budget
    assert len(spy) == sum(1 for t in ts if t.intermediate_values)
    assert all(c.model.width != 1.0 for c in spy)
    assert all(t.user_attrs["params"] <= 300_000 for t in ts if t.intermediate_values)

    good, weak = ts[1], ts[2]
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2, 3]
    assert good.value == good.intermediate_values[3] and good.value > 0.2  # chance is 0.1
    # the best epoch is stored beside the last epoch's value
    best_epoch = max(good.intermediate_values, key=lambda e: (good.intermediate_values[e], -e))
    assert good.user_attrs["best_epoch"] == best_epoch
    assert good.user_attrs["best_value"] == good.intermediate_values[best_epoch]
    # every trained trial's config names the data it ran on: the resolved file and its sha256
    data = good.system_attrs[CONFIG]["data"]
    assert data["path"] == os.environ["HPS_DATA"] and len(data["sha256"]) == 64
    assert good.system_attrs[DATA] == {"dataset": "cifar10", "source": "npz", "path": data["path"], "sha256": data["sha256"],
                                       "split_seed": 0, "val_fraction": 0.2, "subset": 1500}
    assert weak.state == TrialState.PRUNED and list(weak.intermediate_values) == [1]
    assert reason(weak).startswith("pruned by median at epoch 1 (val_acc ")
    assert weak.user_attrs["prune_reason"] == "pruner:median"
    for t in ts:
        assert t.system_attrs[CONFIG]["model"]["name"] == "airnet"
        if t.state == TrialState.PRUNED:
            assert reason(t)


@pytest.mark.slow
def test_export_retrain_and_real_clients_agree(tmp_path: Path, study_name: str) -> None:
    url = PG_URL
    space = load_space(write_space(tmp_path, study_name))
    run(space, url, trials=5, progress="none")
    study = optuna.load_study(study_name=study_name, storage=url)
    out = tmp_path / "best.yaml"
    best = export(study, out, url, artifact_dir=tmp_path / "artifacts")
    assert best.number == study.best_trial.number

    # hps retrain takes the export unchanged and reproduces the trial within 0.5 point
    cfg = load_config(out)
    again = train(cfg)
    assert abs(again.val_acc - best.value) <= 0.005
    provenance = yaml.safe_load(out.read_text())["provenance"]
    assert provenance["trial"] == best.number and provenance["values"] == [best.value]
    assert provenance["budget_figures"]["params"] <= 300_000 and provenance["versions"]["optuna"] == optuna.__version__
    assert "postgres@" in provenance["storage"]

    # optuna's own CLI agrees
    cli = subprocess.run([str(Path(sys.executable).parent / "optuna"), "best-trial", "--study-name", study_name,
                          "--storage", url, "-f", "yaml"], capture_output=True, text=True, check=True)
    row = yaml.safe_load(cli.stdout)
    row = row[0] if isinstance(row, list) else row
    assert row["number"] == best.number and row["value"] == pytest.approx(best.value)
    assert row["params"] == provenance["params"]

    # ... and so do `optuna studies`, optuna.load_study and hps status on the same URL
    listed = subprocess.run([str(Path(sys.executable).parent / "optuna"), "studies", "--storage", url, "-f", "json"],
                            capture_output=True, text=True, check=True)
    assert any(s["name"] == study_name and s["n_trials"] == len(study.trials) for s in json.loads(listed.stdout))
    status = json.loads(hps("status", study_name, "--storage", url, "--json").stdout)
    loaded = optuna.load_study(study_name=study_name, storage=url.replace("+psycopg2", ""))  # psycopg 3, as a notebook would
    assert [(t["number"], t["state"], t["values"]) for t in status["trials"]] == \
        [(t.number, t.state.name.lower(), t.values) for t in loaded.trials]

    # the export is attached to the study as an artifact
    assert [m.filename for m in optuna.artifacts.get_all_artifact_meta(study)] == ["best.yaml"]

    # optuna-dashboard's JSON API agrees
    data = dashboard_json(url, study_name, tmp_path / "artifacts")
    trials_by_number = {t["number"]: t for t in data["trials"]}
    t = trials_by_number[best.number]
    assert t["state"] == "Complete" and t["values"] == [pytest.approx(best.value)]
    assert {p["name"]: p["param_internal_value"] for p in t["params"]} == pytest.approx(best.params)
    assert [a["filename"] for a in data["artifacts"]] == ["best.yaml"]
    pruned = trials_by_number[0]
    assert pruned["state"] == "Pruned" and pruned["intermediate_values"] == []
    assert any(a["key"] == "prune_reason" for a in pruned["user_attrs"])


def dashboard_json(url: str, study_name: str, artifacts: Path) -> dict[str, Any]:
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port), "--artifact-dir", str(artifacts)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        studies = wait_until(lambda: json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=2)), 20,
                             what="optuna-dashboard to start")
        sid = next(s["study_id"] for s in studies["study_summaries"] if s["study_name"] == study_name)
        return json.load(urllib.request.urlopen(f"{base}/api/studies/{sid}", timeout=10))
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_multi_objective_pareto_study(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    path = write_space(tmp_path, study_name, objectives=["val_acc", "params"],
                       study__sampler={"name": "nsga2"}, study__pruner={"name": "none"},
                       warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}, {"model.width": 0.125, "optimizer.lr": 0.05}])
    run(load_space(path), url, trials=3, progress="none")
    study = optuna.load_study(study_name=study_name, storage=url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done and all(len(t.values) == 2 and t.values[1] == t.user_attrs["params"] for t in done)
    best = export(study, tmp_path / "mo.yaml", url)
    assert best in study.best_trials
    assert best.values[0] == max(t.values[0] for t in study.best_trials)
    files = plot(study, tmp_path / "plots")
    assert tmp_path / "plots" / "pareto.png" in files and (tmp_path / "plots" / "history.html").stat().st_size > 1000


def test_budget_limits_during_training(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    path = write_space(tmp_path, study_name, budget={"max_params": 300_000, "max_trial_seconds": 0.01},
                       warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    run(load_space(path), url, trials=2, progress="none")
    t = trials(url, study_name)[0]
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]
    assert reason(t).startswith("ran ") and "> max_trial_seconds 0.01 at epoch 1" in reason(t)


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_divergence_and_invalid_configs_are_pruned_with_reasons(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    path = write_space(tmp_path, study_name,
                       base={"model": {"name": "rescnn", "width": 0.25}, "data": {"subset": 1000},
                             "optimizer": {"lr": 10.0, "momentum": 0.99}, "train": {"epochs": 2, "device": "cpu"}},
                       space={"optimizer.lr": {"low": 5.0, "high": 10.0}, "schedule.name": {"choices": ["cosine", "multistep"]}},
                       budget={}, warm_start=[{"optimizer.lr": 10.0, "schedule.name": "cosine"},
                                              {"optimizer.lr": 10.0, "schedule.name": "multistep"}])
    run(load_space(path), url, trials=2, progress="none")
    nan, invalid = trials(url, study_name)[:2]
    assert nan.state == TrialState.PRUNED and reason(nan).startswith("training loss became nan in epoch 1")
    assert invalid.state == TrialState.PRUNED
    assert "invalid config" in reason(invalid) and "schedule.milestones: [] is not allowed" in reason(invalid)


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_study_compute_budget_stops_new_trials(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = write_space(tmp_path, study_name, budget={"max_params": 300_000, "max_device_hours": 0.0001},
                       warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    run(load_space(path), url, trials=5, progress="none")
    study = optuna.load_study(study_name=study_name, storage=url)
    assert len(study.trials) == 1  # 0.36 s of budget: the first trial spends it
    assert study_attrs(study)[STOPPED].startswith("compute budget spent")
    run(load_space(path), url, trials=5, progress="none")  # a rerun does not start new trials either
    assert len(optuna.load_study(study_name=study_name, storage=url).trials) == 1


@pytest.mark.slow
def test_cli_run_resume_export_retrain(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"HPS_STORAGE": url, "HPS_ARTIFACTS": str(tmp_path / "art")}
    # Ctrl-C once two trials are finished (the poll reads the SQLite file with plain SQL). Without
    # pruning, the third trial (a warm start) trains all its epochs, so the signal lands inside the run.
    n = 8
    path = write_space(tmp_path, study_name, study__trials=n, study__pruner={"name": "none"})
    exe = Path(sys.executable).parent / "hps"
    # hps gets SIGINT as from an interactive shell: a test run started in the background of a
    # non-interactive shell ignores SIGINT, and a child inherits an ignored signal (not a handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([str(exe), "run", str(path), "--no-live"], cwd=REPO,
                                env={**os.environ, **env, "PYTHONFAULTHANDLER": "1"},  # SIGABRT: every thread's stack
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    for _ in range(600):
        time.sleep(0.1)
        try:
            with contextlib.closing(sqlite3.connect(tmp_path / "cli.db", timeout=5)) as db:
                done = db.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:  # no tables yet
            continue
        if done >= 2:
            break
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # (seen once in a few CI runs, not reproduced): say where it hangs
        proc.send_signal(signal.SIGABRT)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"hps run did not stop within 60 s of Ctrl-C; its output and threads:\n{out[-8000:]}")
    assert proc.returncode == 130, out
    assert "interrupted; rerun the same command to resume" in out
    before = {t.number: (t.state, t.values) for t in trials(url, study_name) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(before) >= 2

    again = hps("run", str(path), "--no-live", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(before)} finished, {n - len(before)} owed" in again.stdout
    after = trials(url, study_name)
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    assert all(after[k].state == s and after[k].values == v for k, (s, v) in before.items())  # nothing rerun
    assert hps("run", str(path), "--no-live", env=env).stdout.count("0 owed") == 1

    status = hps("status", study_name, env=env)
    assert status.returncode == 0 and "over budget: params 1.97M > max_params 300k" in status.stdout
    exp = hps("export", study_name, "-o", str(tmp_path / "best.yaml"), env=env)
    assert exp.returncode == 0, exp.stderr
    assert list((tmp_path / "art").iterdir())  # the artifact store holds the export
    rt = hps("retrain", str(tmp_path / "best.yaml"), "--out", str(tmp_path / "rt"), env=env)
    assert rt.returncode == 0, rt.stderr
    trial = yaml.safe_load((tmp_path / "best.yaml").read_text())["provenance"]
    assert abs(json.loads((tmp_path / "rt" / "metrics.json").read_text())["val_acc"] - trial["values"][0]) <= 0.005
    pl = hps("plot", study_name, "-o", str(tmp_path / "plots"), env=env)
    assert pl.returncode == 0 and (tmp_path / "plots" / "intermediate.png").exists()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {name: x, sampler: {name: bayes}}\n")
    r = hps("run", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "bad.yaml: study.sampler: name 'bayes' is not allowed; choose one of tpe, random, cmaes, nsga2, gp" in r.stderr
    r = hps("export", "nope", env={"HPS_STORAGE": f"sqlite:///{tmp_path / 'e.db'}"})
    assert r.returncode == 2 and f"no study storage at {tmp_path / 'e.db'} (nothing was created)" in r.stderr


def test_reopening_a_study_keeps_warm_starts_single(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    space = load_space(write_space(tmp_path, study_name))
    storage = get_storage(url)
    open_study(space, storage, driver=True)
    open_study(space, storage, driver=True)
    waiting = [t for t in optuna.load_study(study_name=study_name, storage=url).trials if t.state == TrialState.WAITING]
    assert len(waiting) == 3


@pytest.mark.slow  # (seconds: kept out of the fast subset)
def test_val_loss_objective_minimizes_val_loss(tmp_path: Path, study_name: str) -> None:
    """objectives: [val_loss] scores trials on val_loss and minimizes it (it used to maximize val_acc)."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    path = write_space(tmp_path, study_name, objectives=["val_loss"], study__pruner={"name": "none"},
                       warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    run(load_space(path), url, trials=1, progress="none")
    study = optuna.load_study(study_name=study_name, storage=url)
    t = study.trials[0]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert t.value == t.intermediate_values[3] and t.value > 1.0  # a loss, not an accuracy
    assert t.user_attrs["best_value"] == min(t.intermediate_values.values())


def test_failures_stop_the_run_with_its_first_reason(tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception inside the meter fails each trial with a stored reason; three in a row stop the
    run, and hps run exits 1 with the first reason (it exited 0)."""
    from typer.testing import CliRunner

    import hps.search.cli as cli_module

    calls = []

    def broken_meter(*args: Any) -> Any:
        calls.append(args)
        raise RuntimeError(f"meter broke on call {len(calls)}")

    monkeypatch.setattr(objective_module, "check", broken_meter)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    path = write_space(tmp_path, study_name, study__trials=6)
    runner = CliRunner()
    result = runner.invoke(cli_module.app, ["run", str(path), "--storage", url, "--no-live"])
    assert result.exit_code == 1, result.output
    assert f"study {study_name}: stopped after 3 failed trials in a row; first: trial 0: RuntimeError: meter broke on call 1" in result.output
    ts = trials(url, study_name)
    assert [t.state for t in ts] == [TrialState.FAIL] * 3
    assert [reason(t) for t in ts] == [f"RuntimeError: meter broke on call {i}" for i in (1, 2, 3)]
    assert {t.user_attrs["fail_reason"] for t in ts} == {"error:RuntimeError"}
    status = runner.invoke(cli_module.app, ["status", study_name, "--storage", url, "--json"])
    assert json.loads(status.output)["stopped"] == ["stopped after 3 failed trials in a row; first: trial 0: RuntimeError: meter broke on call 1"]
    table = runner.invoke(cli_module.app, ["status", study_name, "--storage", url], env={"COLUMNS": "300"})
    assert "stopped: stopped after 3 failed trials in a row" in table.output


@pytest.mark.slow
def test_cli_basics_version_json_delete(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    env = {"HPS_STORAGE": url}
    version = hps("--version")
    assert version.returncode == 0 and version.stdout.startswith("hps 0.1.0 (optuna 5.0.")
    optuna.create_study(study_name=study_name, storage=url).enqueue_trial({"x": 1})
    listed = json.loads(hps("status", "--json", env=env).stdout)
    assert listed == [{"study": study_name, "trials": 1, "directions": ["minimize"], "best_value": None, "stopped": []}]
    refused = hps("delete", study_name, env=env, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "without confirmation; pass --yes" in refused.stderr
    assert hps("delete", "nope", "--yes", env=env).returncode == 2
    gone = hps("delete", study_name, "--yes", env=env)
    assert gone.returncode == 0 and f"deleted study {study_name} (1 trials)" in gone.stdout
    assert json.loads(hps("status", "--json", env=env).stdout) == []


def test_a_database_that_never_answers_fails_fast(tmp_path: Path) -> None:
    """A host that takes the connection and never answers (a packet-dropping firewall, say) ends
    hps with a one-line error after HPS_CONNECT_TIMEOUT instead of hanging."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever speaks
        port = silent.getsockname()[1]
        for url in (f"postgresql://u@127.0.0.1:{port}/db",):
            r = hps("status", "--storage", url, env={"HPS_CONNECT_TIMEOUT": "2"}, timeout=60)
            assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr  # unavailable: docs/exit-codes.md
            assert f"cannot open storage {url.split('u@')[0]}u@127.0.0.1:{port}/db" in r.stderr.replace("postgresql+psycopg2", "postgresql")
            assert "timeout" in r.stderr.lower()


@pytest.mark.slow
def test_set_overrides_on_run_measure_and_retrain(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = write_space(tmp_path, study_name)
    bad = hps("run", str(path), "--set", "study.trials=abc", "--storage", url)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {path}: study.trials: 'abc' is not allowed; expected an integer"
    unknown = hps("run", str(path), "--set", "fixed.train.epoch=1", "--storage", url)
    assert unknown.returncode == 2 and "'train.epoch' is not a trainer key" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.db").exists()

    ok = hps("run", str(path), "--set", "study.trials=2", "--set", "fixed.train.epochs=1", "--set", "warm_start=[]",
             "--storage", url, "--no-live")
    assert ok.returncode == 0, ok.stderr
    study = optuna.load_study(study_name=study_name, storage=url)
    assert len(study.trials) == 2 and all(t.system_attrs[CONFIG]["train"]["epochs"] == 1 for t in study.trials)
    stored = study_attrs(study)["hps:space"]
    assert stored["overrides"] == {"study.trials": 2, "fixed.train.epochs": 1, "warm_start": []}
    assert stored["study"]["trials"] == 2 and stored["base"]["train"]["epochs"] == 1

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SMALL["base"]))
    measured = json.loads(hps("measure", str(cfg), "--set", "model.width=0.5", "--json").stdout)
    assert measured["params"] == hps_api.measure(SMALL["base"], {"model.width": 0.5}).params
    out = tmp_path / "r"
    retrained = hps("retrain", str(cfg), "--set", "train.epochs=1", "--out", str(out))
    assert retrained.returncode == 0, retrained.stderr
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 1


def test_a_worker_that_cannot_read_the_base_fails_its_trials_never_prunes_them(tmp_path: Path) -> None:
    """A family registered in the driver's script but not on the worker (issue 22's report): each
    trial is FAIL with why, the run stops on the failures; it was PRUNED 'invalid config', exit 0."""
    from torch import nn

    from hps.trainers.models._registry import _REGISTRY, register_model

    @register_model("a net the driver registered")
    def driver_only_net(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    try:
        space = load_space({**SMALL, "study": {**SMALL["study"], "name": "w"}, "warm_start": [],
                            "base": {**SMALL["base"], "model": {"name": "driver_only_net"}},
                            "space": {"optimizer.lr": {"low": 0.01, "high": 0.1}}})
    finally:
        del _REGISTRY["driver_only_net"]  # the worker never ran the driver's script
    with pytest.raises(hps_api.RunFailed, match="this worker cannot read the space's base config"):
        run(space, f"sqlite:///{tmp_path / 'w.db'}", trials=3, progress="none")
    ts = trials(f"sqlite:///{tmp_path / 'w.db'}", "w")
    assert [t.state for t in ts] == [TrialState.FAIL] * 3
    assert all("'driver_only_net' is not allowed" in (reason(t) or "") for t in ts)


@pytest.mark.slow
def test_a_rerun_after_editing_the_budget_is_refused_then_continued(tmp_path: Path, study_name: str) -> None:
    """Run, tighten the budget, rerun (refused in one line), rerun with --allow-change, export: the
    exported trial fits the current budget (it exported a trial of the old space that broke it).
    The new definition gets its trials of its own: the old definition's counted toward the target
    (asked for 2, trained none of the new definition, exit 0); the summary and status say both."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    space = {"model.width": {"low": 0.2, "high": 0.5}, "optimizer.lr": {"low": 0.02, "high": 0.2, "log": True}}
    budget = {"max_params": 600_000, "max_epochs": 3}
    path = write_space(tmp_path, study_name, study__trials=3, study__pruner={"name": "none"}, space=space, budget=budget,
                       warm_start=[{"model.width": 0.45, "optimizer.lr": 0.05}])
    assert hps("run", str(path), "--storage", url, "--no-live").returncode == 0
    old_best = max((t for t in trials(url, study_name) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    tight = old_best.user_attrs["params"] - 1  # the old best breaks the new budget
    path = write_space(tmp_path, study_name, study__trials=3, study__pruner={"name": "none"}, space=space,
                       budget={**budget, "max_params": tight}, warm_start=[{"model.width": 0.45, "optimizer.lr": 0.05}])
    refused = hps("run", str(path), "--storage", url, "--no-live")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"was run with another definition (budget.max_params: 600000 -> {tight})" in refused.stderr
    assert "--allow-change" in refused.stderr and len(trials(url, study_name)) == 3  # nothing ran
    go = hps("run", str(path), "--storage", url, "--no-live", "--allow-change", "--trials", "2")
    assert go.returncode == 0, go.stderr
    assert len([t for t in trials(url, study_name)[3:] if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 2
    assert "2/2 finished under this definition (3 under earlier ones)" in go.stdout, go.stdout
    assert "2 finished under this definition (3 under earlier ones" in hps("status", study_name, "--storage", url).stdout
    out = tmp_path / "best.yaml"
    exported = hps("export", study_name, "-o", str(out), "--storage", url)
    assert exported.returncode == 0 and "trials of an earlier definition of the study were not compared" in exported.stdout
    prov = yaml.safe_load(out.read_text())["provenance"]
    assert prov["budget_figures"]["params"] <= tight and prov["trial"] >= 3
    status = json.loads(hps("status", study_name, "--storage", url, "--json").stdout)
    assert [t["current_definition"] for t in status["trials"]][:3] == [False] * 3
    # other data under the same study is refused too, naming its hash
    import numpy as np

    raw = dict(np.load(os.environ["HPS_DATA"]))
    raw["x_train"] = raw["x_train"][::-1].copy()
    np.savez(tmp_path / "other.npz", **raw)
    other = hps("run", str(path), "--storage", url, "--no-live", env={"HPS_DATA": str(tmp_path / "other.npz")})
    assert other.returncode == 2 and "data.sha256: " in other.stderr


@pytest.mark.slow
def test_a_warm_start_added_later_is_enqueued_once_on_the_next_run(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    path = write_space(tmp_path, study_name, study__pruner={"name": "none"}, warm_start=[])
    run(load_space(path), url, trials=1, progress="none")
    path = write_space(tmp_path, study_name, study__pruner={"name": "none"}, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    run(load_space(path), url, trials=2, progress="none")
    run(load_space(path), url, trials=3, progress="none")
    ts = trials(url, study_name)
    warm = [t for t in ts if "hps:warm_start" in t.system_attrs]
    assert len(ts) == 3 and len(warm) == 1 and warm[0].number == 1 and warm[0].params == {"model.width": 0.25, "optimizer.lr": 0.05}
