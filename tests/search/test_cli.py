"""The command line as a user meets it: read-only commands start without torch, Ctrl-C ends a run
with one line and exit 130, the trial it stopped says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hps.search.record import reason
from tests.search.conftest import write_space


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished study of 20 trials with hps's attributes, written without training."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ro') / 's.db'}"
    study = optuna.create_study(study_name="ro", storage=url, direction="maximize")
    for i in range(20):
        trial = study.ask()
        trial.suggest_float("model.width", 0.1, 1.0)
        trial.set_user_attr("params", 1000 * i)
        trial.storage.set_trial_system_attr(trial._trial_id, "hps:config", {"model": {"name": "resnet18", "width": 0.5}})
        study.tell(trial, i / 20)
    return url


@pytest.mark.parametrize("args", [["--version"], ["status"], ["status", "ro"], ["status", "ro", "--json"],
                                  ["export", "ro", "-o", "{tmp}/best.yaml"], ["plot", "ro", "-o", "{tmp}/plots"]])
def test_read_only_commands_do_not_import_torch(small_study: str, tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(tmp=tmp_path) for a in args] + ([] if args == ["--version"] else ["--storage", small_study])
    code = ("import sys, json\nfrom hps.search.cli import app\ntry:\n    app(json.loads(sys.argv[1]), standalone_mode=False)\n"
            "finally:\n    print('\\nloaded:', sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "HPS_ARTIFACTS": str(tmp_path / "art")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("loaded: []"), out.stdout
    if args[0] == "export":
        assert (tmp_path / "best.yaml").read_text().startswith("model: {name: resnet18, width: 0.5}")


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_one_line_and_exit_130(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = write_space(tmp_path, study_name, warm_start=[{"model.width": 0.25, "optimizer.lr": 0.05}])
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "hps"), "run", str(path), "--storage", url, "--no-live",
                             "--set", "fixed.train.epochs=40", "--set", "budget.max_epochs=40"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # until the first trial has reported an epoch
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=study_name, storage=url).trials
        except KeyError:
            continue
        if trials and trials[0].intermediate_values:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert out.startswith(f"study {study_name} on sqlite:")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume (finished trials are kept)"
    assert "Traceback" not in err
    (t,) = optuna.load_study(study_name=study_name, storage=url).trials
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
    assert reason(t) == "interrupted (Ctrl-C / SIGINT); a rerun runs its params again"
